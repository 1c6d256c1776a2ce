"""The module graph: docs/architecture.md's picture of the imports against the code's own (an
`ast` walk, both ways), and the rules that layers point one way (the foundation imports
neither the library nor the commands, the library never imports the commands) and that no
import loops back. Reads files
only (no TensorFlow)."""

import ast
import pathlib
import re

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
ARCHITECTURE = "docs/architecture.md"
# The three packages, from the bottom up; a module is named by its file's stem, a package's
# __init__.py by the package's name.
FOUNDATION, LIBRARY, COMMANDS = "alexnet_keras_base", "alexnet_keras", "alexnet_keras_cli"
PACKAGES = (FOUNDATION, LIBRARY, COMMANDS)
# The page's graph: the code blocks of this section; a line per module, `name -> imports at
# the top of the module [imports inside a function]`, lines under a package's heading line.
GRAPH_HEADING = "## The module graph"
GRAPH_LINE = re.compile(r"^\s+(\w+)\s*->([^\[\]]*)(?:\[([^\]]*)\])?\s*$")


def module_name(package, path):
    return package if path.stem == "__init__" else path.stem


def package_modules(repo_root):
    """{module name: (package, path)} of the three packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((repo_root / package).glob("*.py")):
            name = module_name(package, path)
            if name in found:
                raise ValueError(f"two modules named {name}: the graph names modules by stem")
            found[name] = (package, path)
    return found


def _imported(node, known):
    """The project modules an Import or ImportFrom node names."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    elif node.level == 0 and node.module:
        # `from P import m` names module m when P.m is a module, else P's __init__.
        targets = [f"{node.module}.{alias.name}" for alias in node.names]
        targets = [t if t.split(".")[-1] in known else node.module for t in targets]
    else:
        return set()
    names = set()
    for target in targets:
        parts = target.split(".")
        if parts[0] not in PACKAGES:
            continue
        name = parts[1] if len(parts) > 1 and parts[1] in known else parts[0]
        if len(parts) > 1 and name == parts[1] and known[name][0] != parts[0]:
            raise ValueError(f"{target}: not a module of {parts[0]}")
        names.add(name)
    return names


def code_graph(repo_root):
    """{module: (imports at the top, imports inside functions)} of the three packages; an
    import made at the top is not repeated among a function's."""
    known = package_modules(repo_root)
    graph = {}
    for name, (_package, path) in known.items():
        tree = ast.parse(path.read_text())
        top, inner = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                (top if node.col_offset == 0 else inner).update(_imported(node, known))
        top.discard(name)
        graph[name] = (top, inner - top - {name})
    return graph


def page_graph(text):
    """The graph the page draws, in the form of code_graph."""
    section = text.split(GRAPH_HEADING, 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")[1::2]
    graph = {}
    for line in "\n".join(blocks).splitlines():
        match = GRAPH_LINE.match(line)
        if match:
            top, inner = (
                {name.strip() for name in (group or "").split(",") if name.strip()}
                for group in match.group(2, 3)
            )
            graph[match.group(1)] = (top, inner)
    return graph


def differences(code, page):
    """What the page draws that the code does not do, and the reverse, a line each."""
    lines = []
    for name in sorted(set(code) | set(page)):
        if name not in page:
            lines.append(f"{name}: a module the page does not draw")
            continue
        if name not in code:
            lines.append(f"{name}: drawn, but no such module")
            continue
        for kind, in_code, on_page in zip(
            ("imports", "imports inside a function"), code[name], page[name]
        ):
            if in_code - on_page:
                lines.append(f"{name} {kind} {sorted(in_code - on_page)}, not drawn")
            if on_page - in_code:
                lines.append(
                    f"{name}: drawn to import {sorted(on_page - in_code)} ({kind}), not in the code"
                )
    return lines


def test_the_module_graph_on_the_architecture_page_is_the_codes():
    code = code_graph(REPO_ROOT)
    assert {"layers", "training", "layout", "alexnet_keras", "train"} <= set(code)
    assert "layers" in code["model"][0]  # the walk finds imports
    page = page_graph((REPO_ROOT / ARCHITECTURE).read_text())
    assert differences(code, page) == [], (
        f"mend the graph in {ARCHITECTURE} (`python tests/test_architecture.py` prints the code's)"
    )


def test_the_graph_check_can_fail():
    code = code_graph(REPO_ROOT)
    page = page_graph((REPO_ROOT / ARCHITECTURE).read_text())
    page["model"] = (page["model"][0] - {"layers"}, page["model"][1])
    page["layers"] = (page["layers"][0] | {"serving"}, page["layers"][1])
    del page["signals"]
    assert differences(code, page) == [
        "layers: drawn to import ['serving'] (imports), not in the code",
        "model imports ['layers'], not drawn",
        "signals: a module the page does not draw",
    ]


def test_layers_point_one_way():
    """The foundation imports neither the library nor the commands; the library never
    imports the commands (at the top or inside a function)."""
    known = package_modules(REPO_ROOT)
    package_of = {name: package for name, (package, _path) in known.items()}
    upward = []
    for name, (top, inner) in code_graph(REPO_ROOT).items():
        level = PACKAGES.index(package_of[name])
        upward += [
            f"{name} -> {target}"
            for target in top | inner
            if PACKAGES.index(package_of[target]) > level
        ]
    assert upward == []


def circles(graph):
    """The import loops of the graph (at the top or inside a function), each as the list of
    modules around it, starting from its first module in sorted order."""
    found, state = set(), {}

    def visit(name, path):
        state[name] = "open"
        for target in sorted(set().union(*graph[name])):
            if state.get(target) == "open":
                loop = path[path.index(target) :]
                start = loop.index(min(loop))
                found.add(tuple(loop[start:] + loop[:start]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return sorted(list(loop) for loop in found)


def test_no_module_imports_itself_through_others():
    graph = code_graph(REPO_ROOT)
    assert circles(graph) == []
    graph["layers"] = (graph["layers"][0], graph["layers"][1] | {"model"})  # model -> layers
    assert circles(graph) == [["layers", "model"]]


def render(graph, repo_root=REPO_ROOT):
    """The graph in the page's form, each package's modules from those that import none of
    the package's own upwards."""
    known = package_modules(repo_root)
    depth = {}

    def floor(name):
        if name not in depth:
            depth[name] = 0  # no cycles, but never recurse forever
            same = [dep for dep in set().union(*graph[name]) if known[dep][0] == known[name][0]]
            depth[name] = 1 + max((floor(dep) for dep in same), default=-1)
        return depth[name]

    lines = []
    for package in PACKAGES:
        lines.append(f"{package}/:")
        for name in sorted(
            (n for n in graph if known[n][0] == package), key=lambda n: (floor(n), n)
        ):
            top, inner = graph[name]
            line = f"  {name:<17} -> {', '.join(sorted(top))}"
            lines.append(line + (f"   [{', '.join(sorted(inner))}]" if inner else ""))
        lines.append("")
    return "\n".join(line.rstrip() for line in lines).rstrip()


if __name__ == "__main__":
    print(render(code_graph(REPO_ROOT)))
