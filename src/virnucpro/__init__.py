"""virnucpro: viral sequence identification (VirNucPro) on a fault-tolerant embedding engine."""

from virnucpro._version import __version__

__all__ = [
    "__version__",
    "download_models",
    "model_status",
    "read_embeddings",
    "run_esm2_multi_gpu",
    "run_multi_gpu_inference",
]


def __getattr__(name: str):
    # The API pulls in torch; import it lazily so `import virnucpro` stays cheap.
    if name in ("run_multi_gpu_inference", "run_esm2_multi_gpu"):
        from virnucpro import api

        return getattr(api, name)
    if name in ("download_models", "model_status"):
        from virnucpro.models import download

        return getattr(download, name)
    if name == "read_embeddings":
        from virnucpro.reader import read_embeddings

        return read_embeddings
    raise AttributeError(name)
