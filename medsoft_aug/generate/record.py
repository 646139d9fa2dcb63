"""What ``balance`` reports: the run record (OUT/balance.json), the summary it returns, and the errors a run with
failures raises (InputError when nothing could be made, PartialFailure otherwise)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..errors import FailureList, InputError, PartialFailure
from ..fsutil import sha256_file
from ..versions import package_versions
from .outdir import Job
from .plan import BalancePlan, PlanItem

if TYPE_CHECKING:
    from .select import Picker


def run_record(fingerprint: dict, opts: dict, work: Path, model_dir: Path, plan: BalancePlan,
               shard: tuple[int, int, int], generated: int, skipped: int, failures: FailureList,
               timings: tuple[float, float, float]) -> dict[str, Any]:
    """The content of balance.json (``opts``: the fingerprint's options; ``shard``: k, n, items in the shard;
    ``timings``: seconds loading the model, generating, in all)."""
    (k, n, n_items), (load_s, gen_s, total_s) = shard, timings
    return {"status": "partial" if failures else "complete", "fingerprint": fingerprint,
            "versions": package_versions(), "options": opts,
            "inputs": {"work": str(work), "index.csv": sha256_file(work / "index.csv"),
                       "masks.csv": sha256_file(work / "masks.csv")},
            "model": {"dir": str(model_dir), "sha256": fingerprint["model_sha256"]},
            "plan": plan.to_dict(with_items=False), "shard": {"k": k, "n": n, "items": n_items},
            "generated": generated, "skipped": skipped,
            "failures": [{"sample_id": f.sample_id, "problem": f.problem} for f in failures.items],
            "timings": {"load_model_s": round(load_s, 3), "generate_s": round(gen_s, 3),
                        "total_s": round(total_s, 3)},
            "images_per_s": round(generated / gen_s, 4) if gen_s > 0 else None}


def selection_record(picker: Optional[Picker], rows: dict[str, dict], items: list[PlanItem], generated: int,
                     gen_s: float) -> dict[str, Any]:
    """balance.json's ``selection`` (scorer, K, floor, references) and ``evidence`` ("k of n" per class)."""
    from .evidence import summarize

    ids = {it.sample_id for it in items}
    syn = [r for sid, r in rows.items() if sid in ids and r.get("origin") == "synthetic"]
    out: dict[str, Any] = {"evidence": summarize(syn)}
    if picker is not None:
        out["selection"] = {**picker.describe(),
                            "seconds_per_kept_sample": round(gen_s / generated, 4) if generated else None}
    return out


def summary(plan: BalancePlan, items: list[PlanItem], record: dict, out: Path, *, generated: int,
            skipped: int, failures: list) -> dict[str, Any]:
    """The JSON-ready summary ``balance`` returns (and the CLI prints with --json)."""
    return {"out": str(out), "manifest": str(out / "manifest.csv"), "balance_json": str(out / "balance.json"),
            "normal_class": plan.normal_class, "ratio": plan.ratio, "counts_before": plan.counts_before,
            "to_generate": plan.to_generate, "counts_after": plan.counts_after,
            "shard": record.get("options", {}).get("shard", ""), "in_shard": len(items), "generated": generated,
            "skipped": skipped, "failed": len(failures), "timings": record.get("timings", {}),
            "images_per_s": record.get("images_per_s"), "warnings": record.get("warnings", []),
            "evidence": record.get("evidence", {}), "selection": record.get("selection")}


def raise_failures(failures: FailureList, generated: int, skipped: int, n_todo: int, job: Job,
                   result: dict[str, Any], rejected: int = 0) -> None:
    """InputError when nothing could be made for bad inputs (a new OUT is removed), PartialFailure when some
    samples failed or were rejected by the selection floor (``rejected`` of the failures; all listed)."""
    if not failures:
        return
    if generated == 0 and not skipped and rejected < len(failures):
        if job.created:
            shutil.rmtree(job.out, ignore_errors=True)
        raise InputError(f"no synthetic sample could be made; first: {failures.items[0]}")
    raise PartialFailure(f"{len(failures)} of {n_todo} synthetic samples failed", failures.items, result)
