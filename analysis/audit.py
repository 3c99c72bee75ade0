"""The audit record of a deletion request (``python -m study.forget``): JSON and a
self-contained HTML page for a data-protection officer.

The record says what was asked, what was used (configuration, strategy, hyperparameters,
seed, software, SHA-256 of every input and of the output), the figures before and after on
forget, retain and holdout subjects beside the model retrained without the forget
subjects, the membership-inference attack's figures and power, and the verdict.
"""

from __future__ import annotations

import html
import math
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from study.metrics import Reference

#: The figures the record compares, and how the page names them.
FIGURES = {
    "forget_dice": "Dice on the forget subjects",
    "retain_dice": "Dice on the retain subjects",
    "holdout_dice": "Dice on the holdout subjects (never trained on)",
    "forget_gap_to_retrain": "|forget Dice - the retrain model's|",
    "mia_forget": "forget slabs the attack judges members",
    "mia_forget_auc": "attack AUC, forget vs holdout slabs",
    "mia_auc": "attack AUC, retain vs holdout (its power)",
}
PACKAGE = "mri-unlearning-study"


def software() -> dict[str, str]:
    """This package's version and git commit (``unknown`` outside a checkout), Python, torch."""
    import torch

    source = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "package": PACKAGE,
        "version": version,
        "git_commit": (commit + ("-dirty" if dirty else "")) or "unknown",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _plain(value: Any) -> Any:
    """``nan`` as ``None`` (JSON has no NaN); floats rounded to 6 places."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    return value


def audit_record(
    *,
    request: dict[str, Any],
    study: dict[str, Any],
    unlearning: dict[str, Any],
    software: dict[str, str],
    hashes: dict[str, Any],
    reference: Reference,
    after: dict[str, float],
    checks: list[dict[str, Any]],
    written: bool,
    privacy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record as plain JSON values."""
    figures = {
        name: {
            "original": _plain(reference.original.get(name, math.nan)),
            "unlearned": _plain(after.get(name, math.nan)),
            "retrain": _plain(reference.retrain.get(name, math.nan)),
        }
        for name in FIGURES
    }
    return {
        "request": request,
        "study": study,
        "unlearning": unlearning,
        "software": software,
        "sha256": hashes,
        "figures": figures,
        "verdict": {
            "passed": all(c["passed"] for c in checks),
            "checks": [{k: _plain(v) for k, v in c.items()} for c in checks],
        },
        "privacy": privacy or {},
        "model_written": written,
    }


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        return html.escape("n/a" if value is None else str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #bbb;padding:.25rem .6rem;text-align:left}
th{background:#eee}.pass{color:#185c18}.fail{color:#a01010}code{word-break:break-all}"""


def _check_row(check: dict[str, Any]) -> list[Any]:
    """A verdict check as a table row: a figure's limit, or a membership test's level."""
    limit = f"<= {check['limit']}" if check["name"] == "retain_loss" else f"p >= {check['limit']}"
    result = ("pass" if check["passed"] else "FAIL") + (f": {check['verdict']}" if "verdict" in check else "")
    return [check["name"], check["value"], limit, check["option"], result]


def audit_html(record: dict[str, Any]) -> str:
    """The record as one self-contained HTML page (no external resources; every string escaped)."""
    request, unlearning, verdict = record["request"], record["unlearning"], record["verdict"]
    subjects = ", ".join(request["subjects"])
    outcome = "passed" if verdict["passed"] else "failed"
    written = "written" if record["model_written"] else "withheld"
    figures = [[FIGURES[name], *values.values()] for name, values in record["figures"].items()]
    checks = [_check_row(c) for c in verdict["checks"]]
    power = record.get("privacy", {}).get("attack_power")
    params = unlearning["params"]
    used = [["strategy", params.get("strategy")], ["trial", unlearning["trial_id"]]]
    used += [
        ["epochs", unlearning["epochs"]],
        ["seed (study; trial number)", f"{unlearning['seed']}; {params.get('trial_number')}"],
    ]
    used += [["computed on", unlearning.get("computed_on")]]
    used += [
        [f"hyperparameter {k}", f"{v:.4g}" if isinstance(v, float) else v]
        for k, v in sorted(params.items())
        if k not in ("strategy", "trial_number")
    ]
    used += [[k, v] for k, v in record["software"].items()]
    hashes = record["sha256"]
    files = [["original model", hashes["original_model"]], ["unlearned model", hashes["unlearned_model"]]]
    files += [[f"reference model {name}", d] for name, d in hashes.get("reference_models", {}).items()]
    files += [[f"input {name}", digest] for name, digest in hashes["input_files"].items()]
    parts = [
        f"<h1>Deletion request: subject(s) {html.escape(subjects)}</h1>",
        f"<p>Requested on {html.escape(request.get('requested_on') or 'not given')}; honoured at "
        f"{html.escape(request['honoured_at'])} from the study in "
        f"<code>{html.escape(record['study']['run_dir'])}</code>.</p>",
        f'<p class="{"pass" if verdict["passed"] else "fail"}"><strong>Verdict: {outcome}</strong>; '
        f"the unlearned model was {written}.</p>",
        "<h2>Checks</h2>",
        "<p>"
        + (
            html.escape(
                f"The membership attack's power on the shadow models: AUC {power['auc']}, true-positive "
                f"rate {power['tpr_at_5_fpr']} at 5% false positives, {power['pairs']} pairs."
            )
            if power
            else "No shadow models: the membership test could not be run."
        )
        + "</p>",
        _table(["figure", "value", "limit", "set with", "result"], checks),
        "<h2>Figures</h2>",
        _table(["", "original model", "unlearned model", "retrained without them"], figures),
        "<h2>What was used</h2>",
        _table(["what", "value"], used),
        "<h2>SHA-256</h2>",
        _table(["file", "digest"], files),
    ]
    title = html.escape(f"Deletion request {subjects}")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
