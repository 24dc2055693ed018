"""Python API around the engine (the CLI uses the same functions)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from virnucpro.engine.devices import default_cpu_workers, resolve_devices, threads_per_worker
from virnucpro.engine.job import EngineOptions, JobResult, merge_job, run_embedding_job
from virnucpro.engine.jobstate import parse_shard
from virnucpro.models.base import EmbedderSpec

DEFAULT_ESM2 = "esm2_t36_3B_UR50D"


def resolve_model(
    model: str,
    *,
    layers: Sequence[int] = (-1,),
    per_token: bool = False,
    precision: str = "auto",
    flag: str = "--model",
) -> EmbedderSpec:
    """Resolve and verify a model once, in the parent (ESM-2 or DNABERT-S)."""
    from virnucpro.models.dnabert_s import resolve_dnabert
    from virnucpro.models.hub import resolve_esm2

    if is_dnabert_source(model):
        return resolve_dnabert(model, precision=precision, flag=flag)
    return resolve_esm2(
        model, layers=tuple(layers), per_token=per_token, precision=precision, flag=flag
    )


def is_dnabert_source(model: str) -> bool:
    """True for the DNABERT-S hub id or a local folder holding a BERT-type config."""
    folder = Path(model)
    if (folder / "config.json").is_file():
        import json

        config = json.loads((folder / "config.json").read_text())
        return config.get("model_type") == "bert" or any(
            "Bert" in a for a in config.get("architectures", [])
        )
    return "dnabert" in model.lower()


def default_tokens_per_batch(devices: list[str]) -> int:
    """4096 tokens per batch on CPU, 16384 on a GPU."""
    return 16384 if any(d.startswith("cuda") for d in devices) else 4096


def embed(
    fasta_files: Sequence[str | Path] | str | Path,
    output_dir: str | Path,
    spec: EmbedderSpec,
    *,
    world_size: int | None = None,
    devices: str = "auto",
    tokens_per_batch: int | None = None,
    unit_tokens: int | None = None,
    max_retries: int = 3,
    worker_timeout: float | None = 900.0,
    strict: bool = False,
    restart: bool = False,
    quiet: bool = True,
    backend: str = "local",
    ray_address: str | None = None,
    shard: tuple[int, int] | str | None = None,
    desc: str = "embedding",
    keep_work: bool = False,
) -> JobResult:
    """Run one embedding job; returns its JobResult (exit code, counts, failed ranks)."""
    if isinstance(fasta_files, (str, Path)):
        fasta_files = [fasta_files]
    if isinstance(shard, str):
        shard = parse_shard(shard)
    if backend == "ray" and ray_address and (devices or "auto") == "auto":
        from virnucpro.engine.ray_session import cluster_devices

        device_list = cluster_devices(ray_address, world_size)  # one actor per cluster GPU
    else:
        device_list = resolve_devices(devices, world_size)
        if world_size is None and device_list == ["cpu"]:  # the CPU rule, see devices.py
            device_list = ["cpu"] * default_cpu_workers(spec.weights)
    options = EngineOptions(
        devices=device_list,
        tokens_per_batch=tokens_per_batch or default_tokens_per_batch(device_list),
        unit_tokens=unit_tokens,
        max_retries=max_retries,
        worker_timeout=worker_timeout,
        strict=strict,
        restart=restart,
        quiet=quiet,
        threads=threads_per_worker(device_list),
        backend=backend,
        ray_address=ray_address,
        shard=shard,
        keep_work=keep_work,
    )
    return run_embedding_job(
        [Path(f) for f in fasta_files], Path(output_dir), spec, options, desc=desc
    )


def merge(output_dir: str | Path, *, strict: bool = False, quiet: bool = True) -> JobResult:
    """Merge and validate the ``--shard I/N`` runs in ``output_dir`` into embeddings.h5."""
    return merge_job(Path(output_dir), strict=strict, quiet=quiet)


def _spec_from_config(model_config, options: dict) -> EmbedderSpec:
    if isinstance(model_config, EmbedderSpec):
        return model_config
    if isinstance(model_config, (str, Path)):
        model_config = {"model": str(model_config)}
    config = dict(model_config)
    name = config.pop("model", None) or config.pop("model_name", None) or DEFAULT_ESM2
    for key in ("layers", "per_token", "precision"):
        if key in options:
            config.setdefault(key, options.pop(key))
    return resolve_model(str(name), **config)


def run_multi_gpu_inference(
    fasta_files: Sequence[str | Path] | str | Path,
    output_dir: str | Path,
    model_config: EmbedderSpec | str | dict,
    world_size: int | None = None,
    **options,
) -> tuple[Path, list[int]]:
    """Embed ``fasta_files`` into ``output_dir/embeddings.h5`` with one worker per device.

    ``model_config`` is a model name, hub id or path, a dict (``model``, ``layers``,
    ``per_token``, ``precision``) or an EmbedderSpec. ``world_size=None`` means one worker
    per visible GPU, or one CPU worker when there is none. Returns the output path and the
    ranks that failed (their missing sequences are listed in ``output_dir/missing.tsv``).
    Options: devices, tokens_per_batch, unit_tokens, max_retries, worker_timeout, strict,
    restart, quiet, backend ("local" or "ray"), ray_address, shard ("I/N").
    """
    spec = _spec_from_config(model_config, options)
    result = embed(fasta_files, output_dir, spec, world_size=world_size, **options)
    return result.output, result.failed_ranks


def run_esm2_multi_gpu(
    fasta_files: Sequence[str | Path] | str | Path,
    output_dir: str | Path,
    world_size: int | None = None,
    model_name: str = DEFAULT_ESM2,
    **options,
) -> Path:
    """Like ``run_multi_gpu_inference`` for ESM-2, but raises RuntimeError if any rank failed."""
    model_config = {"model": model_name}
    output, failed = run_multi_gpu_inference(
        fasta_files, output_dir, model_config, world_size, **options
    )
    if failed:
        raise RuntimeError(
            f"ESM-2 embedding failed on rank(s) {', '.join(map(str, failed))}; "
            f"the output {output} holds only the completed sequences "
            f"(missing ones are listed in {Path(output_dir) / 'missing.tsv'})"
        )
    return output
