"""Check a dataset before any model runs: ``python -m umd_lightning.check``.

Reads a manifest file or a dataset layout, validates every case (files exist and read, 3D, no NaN, label ids
inside the organ set, label on the image grid or, for PET, overlapping it) and prints a table of problems::

    python -m umd_lightning.check --manifest cases.csv
    python -m umd_lightning.check --layout nnunet --root Dataset001_X --option label_map=total
    python -m umd_lightning.check --layout pattern --root DIR --option 'images={CT: "ct/{subject}.nii.gz"}'

Exit status: 0 when every case is usable, 1 when any is not, 2 when the dataset cannot be read at all.
Warnings (e.g. PET values that look like Bq/ml rather than SUV) are printed but do not fail the check.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import nibabel as nib
import numpy as np
import yaml

from umd_lightning.data.manifest import (  # noqa: F401 - SUV_PLAUSIBLE_MAX re-exported
    SUV_PLAUSIBLE_MAX,
    Manifest,
    ManifestError,
    Problem,
    pet_units_problem,
    read_manifest,
    validate_manifest,
)
from umd_lightning.organs import SESSION_VIEWS, get_organ_set, is_pet

Level = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One row of the check table."""

    case_id: str
    path: str
    problem: str
    level: Level = "error"


def parse_option(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as YAML (numbers, lists and mappings work).

    Example:
        >>> parse_option("label_map={CT: total, MRI: total_mr}")
        ('label_map', {'CT': 'total', 'MRI': 'total_mr'})
    """
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"option {text!r} is not key=value")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _pet_warnings(manifest: Manifest, failed: set[str]) -> list[Finding]:
    out = []
    for r in manifest:
        if r.case_id in failed or not is_pet(r.view):
            continue
        problem = pet_units_problem(np.asanyarray(nib.load(str(r.image)).dataobj))
        if problem:
            out.append(Finding(r.case_id, str(r.image), problem, "warning"))
    return out


def check_manifest(
    manifest: Manifest, organ_set: str = "umd13", *, require_labels: bool = True, pet_units: bool = True
) -> list[Finding]:
    """Every problem of every case, errors first.

    Args:
        manifest: the cases.
        organ_set: organ set the labels must use.
        require_labels: a case without a label is unusable (evaluation needs one).
        pet_units: warn about PET whose values do not look like SUV.

    Returns:
        The findings; a case with any ``error`` finding is unusable.
    """
    organs = get_organ_set(organ_set)
    problems: list[Problem] = validate_manifest(manifest, organs, raise_on_error=False)
    findings = [Finding(p.case_id, p.path, p.problem) for p in problems]
    if require_labels:
        findings += [Finding(r.case_id, str(r.image), "no reference label") for r in manifest if r.label is None]
    present = {(r.subject_id, r.view) for r in manifest}
    for r in manifest:
        anatomical = SESSION_VIEWS[r.session][0]
        if is_pet(r.view) and (r.subject_id, anatomical) not in present:
            findings.append(
                Finding(r.case_id, str(r.image), f"no {anatomical} scan of the same session (pairs need it)", "warning")
            )
    if pet_units:
        findings += _pet_warnings(manifest, {f.case_id for f in findings if f.level == "error"})
    return sorted(findings, key=lambda f: (f.level != "error", f.case_id))


def print_findings(findings: Sequence[Finding], manifest: Manifest, *, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape  # problems hold brackets ('umd_lightning[dicom]') that are not markup
    from rich.table import Table

    console = console or Console()
    bad = {f.case_id for f in findings if f.level == "error"}
    if findings:
        table = Table(title=f"{manifest.source or 'manifest'}: problems", show_lines=False)
        table.add_column("case")
        table.add_column("level")
        table.add_column("file", overflow="fold")
        table.add_column("problem", overflow="fold")
        for f in findings:
            style = "red" if f.level == "error" else "yellow"
            table.add_row(escape(f.case_id), f"[{style}]{f.level}[/{style}]", escape(f.path), escape(f.problem))
        console.print(table)
    n_subjects = len(manifest.subjects)
    views = sorted({r.view for r in manifest})
    console.print(
        f"{len(manifest)} case(s) of {n_subjects} subject(s), views {', '.join(views)}: "
        f"{len(manifest) - len(bad)} usable, {len(bad)} unusable"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m umd_lightning.check",
        description="Validate a manifest or dataset layout and print a table of problems (no model is run).",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", type=Path, help="a CSV or JSON manifest")
    src.add_argument("--layout", help="a dataset layout: nnunet, autopet, pattern, manifest")
    parser.add_argument("--root", type=Path, help="the dataset folder (with --layout)")
    parser.add_argument(
        "--option", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
        help="a layout option (YAML value), repeatable: --option label_map=total",
    )
    parser.add_argument("--organ-set", default="umd13", help="organ set the labels must use (default umd13)")
    parser.add_argument("--allow-missing-labels", action="store_true", help="cases without a label are not errors")
    parser.add_argument("--no-pet-units", action="store_true", help="skip the SUV plausibility warning")
    parser.add_argument("--write-manifest", type=Path, help="also write the manifest read to this CSV")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; return the exit status (0 usable, 1 unusable cases, 2 unreadable dataset)."""
    from rich.console import Console

    args = build_parser().parse_args(argv)
    err = Console(stderr=True, soft_wrap=True)
    try:
        if args.manifest is not None:
            manifest = read_manifest(args.manifest)
        else:
            if args.root is None:
                err.print("[red]error:[/red] --layout needs --root DIR")
                return 2
            from umd_lightning.data.layouts import load_layout

            manifest = load_layout(args.layout, args.root, **{"organ_set": args.organ_set, **dict(args.option)})
        get_organ_set(args.organ_set)
    except (ManifestError, ValueError, FileNotFoundError) as exc:
        from rich.markup import escape

        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 2
    findings = check_manifest(
        manifest, args.organ_set, require_labels=not args.allow_missing_labels, pet_units=not args.no_pet_units
    )
    print_findings(findings, manifest, console=Console(width=160))
    if args.write_manifest is not None:
        manifest.write_csv(args.write_manifest)
    return 1 if any(f.level == "error" for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
