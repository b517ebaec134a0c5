"""`export.push`: the export published to the Hugging Face Hub, a side effect of the run.

It runs after every stage (the card carries eval's results), is in no key, and is recorded in the run
record with the commit it made. The executor skips it when a record already holds a push of the same
export (its key) to the same repository and branch, unless `runner run --push` asks again.
The token comes from HF_TOKEN only and is handed to huggingface_hub, never written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from runner.core.errors import StageError
from runner.core.outputs import EvalMetrics, ExportMetadata
from runner.core.stage import Log
from runner.rows.mixture import resolved
from runner.spec.typed import Spec


class HubPush:
    name = "push"
    stage = "export"

    def wanted(self, spec: Spec) -> dict[str, Any] | None:
        """What identifies this push (beside the export's key), or None when the spec asks for none."""
        p = spec.export.push
        return None if p is None else {"repo_id": p.repo_id, "revision": p.revision}

    def apply(self, spec: Spec, artifacts: dict[str, Path], log: Log) -> dict[str, Any]:
        assert spec.export.push is not None  # the executor asks `wanted` first
        token = os.environ.get("HF_TOKEN")
        if not token:
            raise StageError("export.push: set HF_TOKEN to a Hugging Face token with write access (read from the "
                             "environment only, never from the spec)")
        from huggingface_hub import HfApi

        p, export = spec.export.push, artifacts["export"]
        repo = str(p.repo_id)  # never None here: a spec rule requires it
        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            files = _stage_files(export, folder)
            (folder / "README.md").write_text(hub_card(spec, export, artifacts.get("eval")), "utf-8")
            log(f"push: {len(files) + 1} files to {repo}@{p.revision}")
            try:
                api.create_repo(repo, private=p.private, exist_ok=True)
                if p.revision != "main":
                    api.create_branch(repo, branch=p.revision, exist_ok=True)
                info = api.upload_folder(repo_id=repo, folder_path=str(folder), revision=p.revision,
                                         commit_message=f"qlora-runner: {spec.name} (export {export.name[:12]})")
            except Exception as exc:  # the Hub's errors, offline mode, the network: one line, the stages are kept
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise StageError(f"export.push to {repo}@{p.revision} failed: {first}; the run's stages are kept, "
                                 "run again to push") from exc
        log(f"push: committed {info.oid} to {repo}@{p.revision}")
        return {"repo_id": repo, "revision": p.revision, "commit": info.oid, "url": str(info.commit_url),
                "files": sorted(files + ["README.md"])}


PUSH = HubPush()


def _stage_files(export: Path, folder: Path) -> list[str]:
    """Links to what is uploaded: the adapter at the top, `merged/` and `gguf/` when written."""
    names = []
    for path in sorted(export.rglob("*")):
        rel = path.relative_to(export)
        if not path.is_file() or rel.name == "manifest.json" or rel == Path("adapter/README.md"):
            continue
        target = folder / (rel.relative_to("adapter") if rel.parts[0] == "adapter" else rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel == Path("adapter/adapter_config.json"):
            target.write_text(_portable_config(export, path), "utf-8")
        else:
            os.symlink(path, target)
        names.append(target.relative_to(folder).as_posix())
    return names


def _portable_config(export: Path, path: Path) -> str:
    """The adapter's config as the Hub copy should read: a Hub base named by its id and commit (PEFT
    wrote the local snapshot folder it loaded from), so `AutoPeftModelForCausalLM` finds it anywhere."""
    config = json.loads(path.read_text("utf-8"))
    model = ExportMetadata.read(export / "adapter" / "metadata.json").base_model
    if model.id:
        config["base_model_name_or_path"] = model.id
        config["revision"] = model.commit or config.get("revision")
    return json.dumps(config, indent=2, sort_keys=True)


def hub_card(spec: Spec, export: Path, eval_dir: Path | None) -> str:
    """The adapter's card with the metadata the Hub reads: base_model, library_name, datasets, model-index."""
    from huggingface_hub import EvalResult, ModelCardData

    model = ExportMetadata.read(export / "adapter" / "metadata.json").base_model
    datasets = [s.source.hub for role in ("train", "validation") for s in resolved(spec, role) if s.source.hub]
    results = []
    if eval_dir is not None and (eval_dir / "metrics.json").is_file():
        scored = EvalMetrics.read(eval_dir / "metrics.json").benchmarks
        for b in spec.eval.benchmarks:
            acc = scored[b.name].tuned.acc if b.name in scored else None
            if acc is not None:
                results.append(EvalResult(task_type="multiple-choice", dataset_type=b.hub or b.name,
                                          dataset_name=b.name, dataset_split=b.split, metric_type="accuracy",
                                          metric_value=acc, dataset_revision=b.revision))
    data = ModelCardData(base_model=model.id, library_name="peft", datasets=datasets or None,
                         tags=["lora", "qlora", "qlora-runner"], model_name=spec.name, eval_results=results or None)
    body = (export / "adapter" / "README.md").read_text("utf-8").split("---\n", 2)[-1]
    return f"---\n{data.to_yaml()}\n---\n{body}"
