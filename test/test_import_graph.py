"""The import graph of madis_core and madis_ros: no cycle, no upward import, no ROS in madis_core.

Every ``import``/``from ... import`` in the packages counts, at module level or inside a
function (a lazy import is still a dependency). Each module belongs to a layer (LAYERS,
lowest first); a module may import its own layer or lower ones; a package's ``__init__``
may also import its own submodules (it re-exports them). A new module must be given a layer
here, which is the point: the shape of the code is written down and checked.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]

#: (module or package prefix, layer); the longest matching prefix wins
LAYERS: Tuple[Tuple[str, int], ...] = (
    # madis_core: leaves
    ("madis_core.registry", 0), ("madis_core.camera", 0), ("madis_core.io", 0), ("madis_core.metrics", 0),
    ("madis_core.command", 0), ("madis_core.rectify", 0),
    # the thread policy (applied by the package's __init__ before anything loads torch)
    ("madis_core.runtime", 0), ("madis_core.inference_threads", 0),
    # registry mechanism, classical entries (no torch), data
    ("madis_core.models.registry", 1), ("madis_core.models.classical", 1), ("madis_core.data", 1),
    # networks
    ("madis_core.models", 2),
    ("madis_core.models.catalog", 3),
    ("madis_core.checkpoint", 4),
    ("madis_core.export", 5),
    ("madis_core.backends.base", 6),
    ("madis_core.backends", 7),
    ("madis_core.estimator", 8),
    ("madis_core.pipeline", 9), ("madis_core.output_files", 9),
    ("madis_core.evaluate", 10), ("madis_core.predict", 10), ("madis_core.training", 10),
    ("madis_core.cli", 11), ("madis_core.models.cli", 11), ("madis_core", 11),
    # madis_ros: above all of madis_core
    ("madis_ros.transport", 20), ("madis_ros.msgkit", 20), ("madis_ros.shutdown", 20),
    ("madis_ros.process_signals", 20),
    ("madis_ros.image_conversion", 21), ("madis_ros.camera_info", 21), ("madis_ros.sync", 21),
    ("madis_ros.worker", 21),
    ("madis_ros.messages", 22), ("madis_ros.frame_sync", 22), ("madis_ros.calibration", 22),
    ("madis_ros.stereo_frames", 23), ("madis_ros.params", 23), ("madis_ros.node_runtime", 23),
    ("madis_ros.diagnostics", 23),
    ("madis_ros.bag.files", 24), ("madis_ros.bag.topics", 24), ("madis_ros.bag.frames", 24),
    ("madis_ros.bag", 25), ("madis_ros.stereo_node", 25),
    ("madis_ros.bag_tool", 26), ("madis_ros.demo_processes", 26), ("madis_ros.node_entry", 26),
    ("madis_ros.demo", 27), ("madis_ros", 27),
)
#: what madis_core must never import (ROS client libraries, message packages, ROS-only tools)
ROS_MODULES = ("madis_ros", "rclpy", "rosbags", "message_filters", "cv_bridge", "launch", "launch_ros", "sensor_msgs",
               "stereo_msgs", "std_msgs", "builtin_interfaces", "diagnostic_msgs", "rcl_interfaces", "rosgraph_msgs")


def module_files(root: Path, packages=("madis_core", "madis_ros")) -> Dict[str, Path]:
    out = {}
    for pkg in packages:
        for p in sorted((root / pkg).rglob("*.py")):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def imports_of(name: str, path: Path, modules: Set[str]) -> List[Tuple[str, int]]:
    """(imported module, line) for every import in the file; ``from pkg import sub`` names the submodule."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")
                base = base if is_pkg else base[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((sub if sub in modules else mod, node.lineno))
    return out


def layer_of(module: str) -> int:
    best = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise KeyError(module)
    return dict(LAYERS)[best]


def check_graph(root: Path, layer=layer_of, packages=("madis_core", "madis_ros"), core="madis_core") -> List[str]:
    """Every problem of the import graph under ``root`` as a line of text (empty: none)."""
    files = module_files(root, packages)
    modules = set(files)
    problems, graph = [], {m: set() for m in files}
    for m, path in files.items():
        try:
            lm = layer(m)
        except KeyError:
            problems.append(f"{m}: no layer; add it to LAYERS in test/test_import_graph.py")
            continue
        for target, line in sorted(set(imports_of(m, path, modules))):
            top = target.split(".")[0]
            if m.split(".")[0] == core and top in ROS_MODULES:
                problems.append(f"{path.relative_to(root)}:{line}: {m} imports {target} (no ROS in {core})")
            if target not in modules:
                continue
            graph[m].add(target)
            own_child = path.name == "__init__.py" and target.startswith(m + ".")
            try:
                lt = layer(target)
            except KeyError:
                continue  # reported for the target itself
            if lt > lm and not own_child:
                problems.append(f"{path.relative_to(root)}:{line}: upward import {m} (layer {lm}) -> {target} "
                                f"(layer {lt})")
    problems += [f"import cycle among: {', '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (or a self-import): Tarjan."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_packages_have_no_cycle_no_upward_import_and_no_ros_in_madis_core():
    problems = check_graph(REPO)
    assert not problems, "\n".join(problems)


def test_the_checker_finds_cycles_upward_imports_ros_and_unplaced_modules(tmp_path):
    """The check above can fail: a made-up tree with each kind of problem."""
    files = {
        "madis_core/__init__.py": "",
        "madis_core/low.py": "import madis_core.high\n",                 # upward
        "madis_core/high.py": "def f():\n    from madis_core import mid\n",
        "madis_core/mid.py": "from madis_core.high import f\nimport rclpy\n",  # cycle high <-> mid; ROS
        "madis_core/stray.py": "",                                        # no layer
        "madis_ros/__init__.py": "from madis_core import low\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    layers = {"madis_core": 9, "madis_core.low": 0, "madis_core.mid": 1, "madis_core.high": 1, "madis_ros": 20}
    problems = check_graph(tmp_path, layer=lambda m: layers[m])
    text = "\n".join(problems)
    assert "upward import madis_core.low (layer 0) -> madis_core.high (layer 1)" in text
    assert "import cycle among: madis_core.high, madis_core.mid" in text
    assert "madis_core.mid imports rclpy (no ROS in madis_core)" in text
    assert "madis_core.stray: no layer" in text
    assert len(problems) == 4, text


@pytest.mark.parametrize("module", ["madis_core.models", "madis_core.backends.base", "madis_core.estimator",
                                    "madis_ros.stereo_node", "madis_ros.bag_tool"])
def test_light_modules_do_not_import_torch(module):
    """The node and the bag tools start without torch until a network is built (SGBM never loads it)."""
    import subprocess
    import sys

    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0
