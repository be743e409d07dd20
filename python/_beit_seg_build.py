"""PEP 517 / PEP 660 build backend of python/ (`pip install ./python`), standard library only.

It packs the modules listed in pyproject.toml's `[tool.beit-seg-build] py-modules` into a
`py3-none-any` wheel with the `[project]` metadata (name, version, dependencies, extras,
console scripts): no setuptools or `wheel` package, so nothing is downloaded even with build
isolation (on Python < 3.11 it needs `tomli` to read pyproject.toml). `pip install -e ./python`
gets an editable wheel holding a `.pth` file that points at this directory. `python -m build`
gets an sdist too. No file is written inside the source tree.
"""
import base64
import hashlib
import io
import os
import re
import tarfile
import zipfile

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
_EPOCH = 315532800  # 1980-01-01, the earliest zip timestamp: reproducible archives


def _config():
    with open(os.path.join(HERE, "pyproject.toml"), "rb") as f:
        data = tomllib.load(f)
    project = data["project"]
    modules = data.get("tool", {}).get("beit-seg-build", {}).get("py-modules", [])
    if not modules:
        raise RuntimeError("pyproject.toml: [tool.beit-seg-build] py-modules is empty")
    return project, modules


def _dist(project):
    return re.sub(r"[-_.]+", "_", project["name"]).lower()


def _metadata(project):
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {project['version']}"]
    if project.get("description"):
        lines.append(f"Summary: {project['description']}")
    lic = project.get("license")
    if isinstance(lic, dict) and lic.get("text"):
        lines.append(f"License: {lic['text']}")
    if project.get("requires-python"):
        lines.append(f"Requires-Python: {project['requires-python']}")
    lines += [f"Requires-Dist: {d}" for d in project.get("dependencies", [])]
    for extra, deps in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        for d in deps:
            req, _, marker = d.partition(";")
            cond = f'({marker.strip()}) and extra == "{extra}"' if marker.strip() else f'extra == "{extra}"'
            lines.append(f"Requires-Dist: {req.strip()}; {cond}")
    return "\n".join(lines) + "\n"


def _entry_points(project):
    out = []
    for group, table in (("console_scripts", project.get("scripts", {})),
                         ("gui_scripts", project.get("gui-scripts", {}))):
        if table:
            out.append(f"[{group}]")
            out += [f"{k} = {v}" for k, v in table.items()]
            out.append("")
    return "\n".join(out)


def _dist_info_files(project):
    files = {
        "METADATA": _metadata(project),
        "WHEEL": "Wheel-Version: 1.0\nGenerator: beit-seg-build\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    eps = _entry_points(project)
    if eps:
        files["entry_points.txt"] = eps
    return files


def _write_wheel(wheel_directory, project, payload):
    """payload: [(archive path, bytes)]; adds the .dist-info files and RECORD."""
    dist, version = _dist(project), project["version"]
    info = f"{dist}-{version}.dist-info"
    entries = list(payload) + [(f"{info}/{k}", v.encode()) for k, v in _dist_info_files(project).items()]
    record = []
    for path, data in entries:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    entries.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    name = f"{dist}-{version}-py3-none-any.whl"
    os.makedirs(wheel_directory, exist_ok=True)
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in entries:
            zi = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    return name


def _read(rel):
    with open(os.path.join(HERE, rel), "rb") as f:
        return f.read()


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project, modules = _config()
    return _write_wheel(wheel_directory, project, [(f"{m}.py", _read(f"{m}.py")) for m in modules])


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    project, modules = _config()
    for m in modules:
        _read(f"{m}.py")  # fail now, not at import time, if a module is missing
    pth = (f"{_dist(project)}.pth", (HERE + "\n").encode())
    return _write_wheel(wheel_directory, project, [pth])


def build_sdist(sdist_directory, config_settings=None):
    project, modules = _config()
    base = f"{_dist(project)}-{project['version']}"
    files = ["pyproject.toml", os.path.basename(__file__)] + [f"{m}.py" for m in modules]
    os.makedirs(sdist_directory, exist_ok=True)
    name = f"{base}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz", format=tarfile.PAX_FORMAT) as t:
        members = [(f, _read(f)) for f in files] + [("PKG-INFO", _metadata(project).encode())]
        for rel, data in members:
            ti = tarfile.TarInfo(f"{base}/{rel}")
            ti.size, ti.mtime, ti.mode = len(data), _EPOCH, 0o644
            t.addfile(ti, io.BytesIO(data))
    return name
