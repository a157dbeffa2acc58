"""File patterns with ``{subject}``, ``{session}`` and ``{view}`` fields: a new layout is one config file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

from umd_lightning.data.layouts.labels import LabelMapOption
from umd_lightning.data.layouts.records import DEFAULT_SESSION_NAMES, DEFAULT_VIEW_NAMES, _finish, _session_view, _token
from umd_lightning.data.manifest import Manifest, ManifestError, ScanRecord
from umd_lightning.organs import SESSION_VIEWS, VIEW_SESSION, VIEWS, OrganSet
from umd_lightning.paths import path_problem

_FIELD = re.compile(r"\{(\w+)\}")


def _token_regex(tokens: Sequence[str]) -> str:
    """Alternation of normalised tokens, case-insensitive, any single separator allowed between characters."""
    alts = sorted({t for t in tokens if t}, key=len, reverse=True)
    return "(?i:" + "|".join("[_ .-]?".join(re.escape(c) for c in t) for t in alts) + ")"


def _pattern_regex(pattern: str, choices: Mapping[str, Sequence[str]] | None = None) -> re.Pattern:
    """Compile a file pattern.

    ``{name}`` matches text within one path component (shortest first), or one of ``choices[name]`` (tokens as
    normalised by :func:`_token`, so ``PET_CT``, ``pet-ct`` and ``petct`` all match ``petct``); ``**/`` matches
    any folders and ``*`` any text within a component.
    """
    choices = choices or {}
    out, pos, seen = [], 0, set()
    for m in re.finditer(r"\{(\w+)\}|\*\*/|\*", pattern):
        out.append(re.escape(pattern[pos : m.start()]))
        if m.group(1):
            name = m.group(1)
            body = _token_regex(choices[name]) if name in choices else "[^/]+?"
            out.append(f"(?P={name})" if name in seen else f"(?P<{name}>{body})")
            seen.add(name)
        elif m.group(0) == "**/":
            out.append("(?:.*/)?")
        else:
            out.append("[^/]*")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out))


def read_pattern(
    root: str | Path,
    *,
    images: str | Mapping[str, str],
    labels: str | Mapping[str, str] | None = None,
    session_names: Mapping[str, str] | None = None,
    view_names: Mapping[str, str] | None = None,
    label_map: LabelMapOption = None,
    cache_dir: str | Path | None = None,
    organ_set: str | OrganSet = "umd13",
) -> Manifest:
    """Read any folder whose file paths follow patterns.

    Patterns are relative to ``root`` and use ``{subject}``, ``{session}``, ``{view}`` (and any other
    ``{name}``, matched within one folder or file name), ``*`` and ``**/``. For example::

        images: "{subject}/{session}/{view}.nii.gz"          # petct/ct.nii.gz, petmri/pet.nii.gz, ...
        labels: "{subject}/{session}/labels.nii.gz"
        # or, one pattern per view / per anatomical view or session:
        images: {CT: "ct/{subject}.nii.gz", PET_CT: "pet/{subject}_suv.nii.gz"}
        labels: {CT: "seg/{subject}.nii.gz"}

    ``{session}`` and ``{view}`` values are read case-insensitively through ``session_names`` /
    ``view_names`` (defaults: ``ct``/``petct`` -> petct, ``mr``/``mri``/``petmri`` -> petmri; view ``ct``, ``mr``,
    ``pet``...). A generic ``PET`` view becomes the PET view of the record's session. Label patterns are
    formatted with the fields matched in the anatomical image of the same session (``{subject}``, ``{session}``
    as written in the path, ...); a PET takes its session's label.

    Raises:
        ManifestError: a pattern lacks ``{subject}``; a matched value names no session or view; two files for
            one subject and view; nothing matched.
    """
    root = Path(root)
    problem = path_problem(root, "folder")
    if problem:
        raise ManifestError(f"{root}: {problem}")
    sessions = {**DEFAULT_SESSION_NAMES, **{_token(k): v for k, v in (session_names or {}).items()}}
    views_by_token = {**DEFAULT_VIEW_NAMES, **{_token(v): v for v in VIEWS}}
    views_by_token.update({_token(k): v for k, v in (view_names or {}).items()})
    image_patterns: list[tuple[str | None, str]] = (
        [(None, images)] if isinstance(images, str) else [(str(k), str(v)) for k, v in images.items()]
    )
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    records: list[tuple[ScanRecord, dict[str, str]]] = []
    for fixed_view, pattern in image_patterns:
        if fixed_view is not None and fixed_view not in (*VIEWS, "PET"):
            raise ManifestError(f"images: key {fixed_view!r} is not a view ({', '.join(VIEWS)})")
        rx = _pattern_regex(pattern, {"session": list(sessions), "view": list(views_by_token)})
        if "subject" not in rx.groupindex:
            raise ManifestError(f"images pattern {pattern!r} has no {{subject}} field")
        for rel in files:
            m = rx.fullmatch(rel)
            if m is None:
                continue
            where = str(root / rel)
            groups = {k: v for k, v in m.groupdict().items() if v is not None}
            session = None
            if "session" in groups:
                session = sessions.get(_token(groups["session"]))
                if session is None:
                    raise ManifestError(f"{where}: session {groups['session']!r} is unknown; add it to session_names")
            view = fixed_view
            if view is None and "view" in groups:
                view = views_by_token.get(_token(groups["view"]))
                if view is None:
                    raise ManifestError(f"{where}: view {groups['view']!r} is unknown; add it to view_names")
            if view is None:
                if session is None:
                    raise ManifestError(f"images pattern {pattern!r} needs a {{view}} or {{session}} field")
                view = SESSION_VIEWS[session][0]
            if view == "PET" and session is None:
                raise ManifestError(f"{where}: a PET view needs its session ({{session}} field or a PET_CT/PET_MRI key)")
            if session is None:
                session = VIEW_SESSION[view]
            view = _session_view(session, view, where)
            records.append((ScanRecord(groups["subject"], session, view, root / rel), groups))

    result = []
    anatomical_groups = {
        (r.subject_id, r.session): g for r, g in records if r.view == SESSION_VIEWS[r.session][0]
    }
    for rec, groups in records:
        label = None
        if labels is not None:
            pattern = _label_pattern(labels, rec.session)
            if pattern is not None:
                fields = {**groups, **anatomical_groups.get((rec.subject_id, rec.session), {})}
                fields.setdefault("session", rec.session)
                try:
                    label = root / pattern.format(**fields)
                except KeyError as exc:
                    raise ManifestError(f"labels pattern {pattern!r}: field {exc} is not in the image pattern") from exc
        result.append(ScanRecord(rec.subject_id, rec.session, rec.view, rec.image, label))
    return _finish(result, str(root), root, label_map, cache_dir, organ_set)


def _label_pattern(labels: str | Mapping[str, str], session: str) -> str | None:
    if isinstance(labels, str):
        return labels
    anatomical = SESSION_VIEWS[session][0]
    for key in (anatomical, session, "default"):
        if key in labels:
            return labels[key]
    return None
