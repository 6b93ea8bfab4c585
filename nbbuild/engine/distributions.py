"""Installed distributions: which one holds a module a rule reaches, its name and version, and
whether it is an editable install (the user's own code).

Contract: `installed(top, name, file)`, for module `name` of top-level package `top` loaded from
`file`, is (whether it is the user's own code, (distribution name, version) or None):
- the distribution is looked for in the folder the module was imported from (its site: `file` less
  the module's dotted path): first by name (a dist-info or egg-info folder named like `top`,
  normalised as importlib.metadata does), then among those claiming `top` (top_level.txt, else
  RECORD); a module in site-packages or dist-packages not found there is looked for so in every
  folder of sys.path;
- a module elsewhere (next to the notebook, in a project folder) belongs to the editable install
  whose project folder holds it (direct_url.json says where), else to no distribution: it is never
  taken for an installed distribution of the same name;
- it is the user's code when its distribution is an editable install, or when it has none and lies
  outside site-packages and dist-packages.
Agrees with importlib.metadata (`distribution`, `packages_distributions()`) for every top-level
module of every installed distribution (tests/test_rule.py), without its search of every folder of
sys.path (a lookup table per folder, built at the first search in a process) or its reading of
every distribution's files (0.3-1 s) or top_level.txt (~12 ms at the first rule of a kernel reaching
a module named unlike its distribution). A folder's listing is kept while its mtime is unchanged;
what was found for a top-level package is kept for the process.
"""
from __future__ import annotations

import functools
import importlib.metadata as md
import json
import os
import pathlib
import sys
import urllib.parse
from dataclasses import dataclass

__all__ = ["installed", "owner", "name_and_version"]

_INFO = (".dist-info", ".egg-info")


def _normalise(name: str) -> str:
    """As importlib.metadata's `Prepared.normalize` (PEP 503, with dashes as underscores), without
    its regular expression (a fifth of a first lookup's time, for 200 distributions)."""
    name = name.lower().replace("-", "_").replace(".", "_")
    while "__" in name:
        name = name.replace("__", "_")
    return name


def _info_name(info: str) -> str:
    """The distribution name in a dist-info folder's name, as importlib.metadata reads it."""
    return os.path.basename(info).lower().rpartition(".")[0].partition("-")[0]


def _read(info: str, filename: str) -> str | None:
    try:
        with open(os.path.join(info, filename), encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class _Site:
    """A folder's dist-info and egg-info folders, as it was when it had mtime `mtime`."""
    mtime: int
    infos: tuple[str, ...]          # their paths, in listing order (importlib.metadata's)
    names: tuple[str, ...]          # the normalised distribution name in each one's name
    by_name: dict[str, str]         # normalised distribution name -> the first folder so named

    @functools.cached_property
    def editables(self) -> tuple[tuple[str, str], ...]:
        """(project folder, with a trailing separator; its dist-info) of every editable install."""
        found = []
        for info in self.infos:
            url_file = os.path.join(info, "direct_url.json")
            text = os.path.exists(url_file) and _read(info, "direct_url.json")   # a stat: half an open's time
            if not text:
                continue
            try:
                direct = json.loads(text)
            except ValueError:
                continue
            url = direct.get("url", "")
            if direct.get("dir_info", {}).get("editable") and url.startswith("file://"):
                root = os.path.realpath(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
                found.append((os.path.join(root, ""), info))
        return tuple(found)


_sites: dict[str, _Site] = {}
_installed: dict[str, tuple[bool, tuple[str, str] | None]] = {}     # by top-level package


def _site(folder: str) -> _Site | None:
    try:
        mtime = os.stat(folder).st_mtime_ns
        found = _sites.get(folder)
        if found is not None and found.mtime == mtime:
            return found
        with os.scandir(folder) as entries:
            infos = tuple(e.path for e in entries if e.name.lower().endswith(_INFO))
    except OSError:             # gone, or not a folder (a zip file on sys.path)
        return None
    names = tuple(_normalise(_info_name(info)) for info in infos)
    by_name: dict[str, str] = {}
    for name, info in zip(names, infos):
        by_name.setdefault(name, info)
    _sites[folder] = site = _Site(mtime, infos, names, by_name)
    return site


def _claims(info: str, top: str) -> bool:
    """Whether distribution `info` holds top-level package `top`: as `packages_distributions()`
    reads it (its top_level.txt, else the first parts of the paths in its RECORD)."""
    declared = (_read(info, "top_level.txt") or "").split()
    if declared:
        return top in declared
    record = "\n" + (_read(info, "RECORD") or "")
    return f"\n{top}/" in record or f"\n{top}.py," in record


def _abbreviates(top: str, name: str) -> bool:
    """Whether `top`'s letters appear in `name` in order: sklearn, scikit-learn; yaml, pyyaml;
    dateutil, python-dateutil; PIL, pillow; bs4, beautifulsoup4."""
    letters = iter(name)
    return all(c in letters for c in top)


def _claimant(site: _Site, top: str) -> str | None:
    """The first distribution of `site` that claims `top`, those whose name it abbreviates tried
    first (reading every one's files costs ~5 ms for 200 distributions)."""
    short = _normalise(top).replace("_", "")
    likely = [i for i, n in zip(site.infos, site.names) if _abbreviates(short, n.replace("_", ""))]
    rest = [i for i in site.infos if i not in likely]       # likely: a handful
    return next((i for i in likely + rest if _claims(i, top)), None)


def _site_of(top: str, name: str, file: str) -> str | None:
    """The folder module `name` was imported from (`file` less its dotted path), or None when its
    file does not lie so (a module made by a loader of its own)."""
    depth = name.count(".") + 1 + os.path.basename(file).startswith("__init__.")
    site = file
    for _ in range(depth):
        site = os.path.dirname(site)
    first = file[len(site):].lstrip(os.sep).partition(os.sep)[0]
    if name.partition(".")[0] != top or (first != top and not first.startswith(top + ".")):
        return None
    return site


def _in_site_packages(path: str) -> bool:
    return "site-packages" in path or "dist-packages" in path


def owner(top: str, name: str, file: str) -> str | None:
    """The dist-info (or egg-info) folder of the distribution holding module `name` of top-level
    package `top`, loaded from `file`; None when no distribution holds it."""
    site_path = _site_of(top, name, file)
    key = _normalise(top)
    here = _site(site_path) if site_path is not None else None
    installed_here = _in_site_packages(file)
    if here is not None:
        found = here.by_name.get(key) or _claimant(here, top)
        if found:
            return found
        if not installed_here:      # never an installed distribution named alike: the user's module
            return _editable_owner(os.path.realpath(file))
    # installed elsewhere, or loaded from where nothing can be listed: as importlib.metadata looks
    folders = [os.path.abspath(p or ".") for p in sys.path if isinstance(p, str)]
    others = [s for s in (_site(f) for f in folders if f != site_path) if s]
    found = next((s.by_name[key] for s in others if key in s.by_name), None)
    if found or not installed_here:
        return found or _editable_owner(os.path.realpath(file))
    return next(filter(None, (_claimant(s, top) for s in others)), None)


def _editable_owner(path: str) -> str | None:
    """The editable install whose project folder holds `path`."""
    for folder in sys.path:
        site = _site(os.path.abspath(folder or ".")) if isinstance(folder, str) else None
        for root, info in site.editables if site else ():
            if path.startswith(root):
                return info
    return None


def name_and_version(info: str) -> tuple[str, str]:
    """From the metadata's first headers (Name and Version come first, as the core metadata
    specification orders them), not `Distribution.metadata`, which parses the whole file with the
    email parser (about 1 ms a package, at a restart's first version of every rule reaching one)."""
    found: dict[str, str] = {}
    for filename in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(info, filename), encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        break               # the headers end at the first blank line
                    field, sep, value = line.partition(":")
                    if sep and field in ("Name", "Version") and field not in found:
                        found[field] = value.strip()
                        if len(found) == 2:
                            return found["Name"], found["Version"]
            break
        except (OSError, UnicodeDecodeError):
            continue
    meta = md.PathDistribution(pathlib.Path(info)).metadata     # headers out of the usual order
    return meta["Name"], meta["Version"]


def _editable(info: str) -> bool:
    try:
        return bool(json.loads(_read(info, "direct_url.json") or "{}").get("dir_info", {}).get("editable"))
    except (ValueError, AttributeError):
        return False


def installed(top: str, name: str, file: str) -> tuple[bool, tuple[str, str] | None]:
    """(is it the user's own code, (distribution name, version) or None) for module `name` of
    top-level package `top` loaded from `file`. The modules of one top-level package share its
    distribution: looked up once (a rule may reach hundreds of pandas' modules)."""
    found = _installed.get(top)
    if found is None:
        info = owner(top, name, file)
        if info is None:
            found = (not _in_site_packages(file), None)
        else:
            found = (_editable(info), name_and_version(info))
        _installed[top] = found
    return found
