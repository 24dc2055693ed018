"""Python API around the engine (the CLI uses the same functions)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from virnucpro.apiguard import check_main_guard
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
    flag: str | None = None,
    models_dir: str | Path | None = None,
) -> EmbedderSpec:
    """Resolve and verify a model once, in the parent (ESM-2 or DNABERT-S).

    ``models_dir`` (default ``$VIRNUCPRO_MODELS``): a folder written by ``virnucpro download
    --dest``; a model NAME is then taken from it (verified, no network). ``flag`` is the CLI
    option the model came from, for messages (None from Python).
    """
    from dataclasses import replace

    from virnucpro.models.dnabert_s import resolve_dnabert
    from virnucpro.models.hub import resolve_esm2
    from virnucpro.models.models_dir import model_in_models_dir, models_dir_from

    folder = models_dir_from(models_dir)
    source, revision = model, None
    if folder is not None and not Path(model).expanduser().exists():
        path, revision = model_in_models_dir(folder, model, flag)
        source = str(path)
    if is_dnabert_source(source):
        spec = resolve_dnabert(source, precision=precision, flag=flag)
    else:
        spec = _without_repeated_layers(
            resolve_esm2(
                source, layers=tuple(layers), per_token=per_token, precision=precision, flag=flag
            )
        )
    return spec if source == model else replace(spec, name=model, revision=revision)


def _without_repeated_layers(spec: EmbedderSpec) -> EmbedderSpec:
    """A layer named twice (``-1,-1`` or ``6,-1`` on a 6-layer model) is dropped, with a note."""
    import dataclasses
    import logging

    from virnucpro.models.esm2 import distinct_layers

    layers, notes = distinct_layers(spec.layers, int(spec.extra["num_layers"]))
    for note in notes:
        logging.getLogger("virnucpro").warning("%s", note)
    return dataclasses.replace(spec, layers=layers) if notes else spec


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
    retry_failed: bool = False,
    keep_work: bool = False,
) -> JobResult:
    """Run one embedding job; returns its JobResult (exit code, counts, failed ranks).

    ``retry_failed``: sequences isolated as failed by an earlier run are computed again.
    """
    check_main_guard()
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
        retry_failed=retry_failed,
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
    for key in ("layers", "per_token", "precision", "models_dir"):
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
    restart, retry_failed, quiet, backend ("local" or "ray"), ray_address, shard ("I/N"),
    models_dir (a folder written by ``virnucpro download --dest``; default
    ``$VIRNUCPRO_MODELS``). Workers are spawned: call this under
    ``if __name__ == "__main__":`` in a script.
    """
    check_main_guard()
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
    """Like ``run_multi_gpu_inference`` for ESM-2, but returns only a complete result.

    Raises RuntimeError when any sequence is missing or failed (whether or not a rank
    failed); the message gives the counts and the files that list them. A partial
    ``embeddings.h5`` is still written (its ``status`` attribute says ``partial``).
    """
    check_main_guard()
    spec = _spec_from_config({"model": model_name}, options)
    result = embed(fasta_files, output_dir, spec, world_size=world_size, **options)
    if result.exit_code != 0:
        raise RuntimeError(incomplete_message(result, Path(output_dir)))
    return result.output


def incomplete_message(result: JobResult, output_dir: Path) -> str:
    """One line: how many sequences are missing or failed, and where they are listed."""
    parts = []
    if result.missing:
        parts.append(f"{result.missing} missing (listed in {output_dir / 'missing.tsv'})")
    if result.failed:
        parts.append(f"{result.failed} failed (listed in {output_dir / 'failed.tsv'})")
    ranks = (
        f"; failed rank(s): {', '.join(map(str, result.failed_ranks))}"
        if result.failed_ranks
        else ""
    )
    where = (
        f"the output {result.output} holds only the embedded sequences"
        if result.output
        else ("nothing was merged")
    )
    return (
        f"ESM-2 embedding incomplete: {result.embedded} of {result.expected} sequences "
        f"embedded, {'; '.join(parts) or 'some not computed'}{ranks}; {where}. Run again to "
        "compute missing ones (--retry-failed / retry_failed=True also retries failed ones)"
    )
