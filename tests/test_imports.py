"""The import graph of the project: no cycles, no function-local imports of project modules,
and the layers only import downwards."""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ('main.py', 'main_finetune.py', 'pretrain_DAMSM.py', 'eval_IS.py', 'eval_FID.py')

# Bottom to top: a module may import its own layer's modules and those of layers below.
LAYERS = [
    ('models',),
    ('miscc.core',),
    ('miscc.data', 'datasets'),
    ('miscc.families',),
    ('miscc.evaluation',),
    ('miscc.training',),
    ('miscc.demo',),
    ('miscc.cli', 'miscc.launch', 'miscc.explorer'),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(parts)


def _project_files():
    files = [ROOT / 'datasets.py'] + sorted((ROOT / 'models').glob('*.py'))
    files += sorted((ROOT / 'miscc').rglob('*.py'))
    return files


def _is_project(name: str) -> bool:
    top = name.split('.')[0]
    return top in ('miscc', 'models', 'datasets')


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list:
    """Absolute names a ``from ... import ...`` statement in ``module`` refers to."""
    if node.level:
        base = module.split('.') if is_package else module.split('.')[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = '.'.join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module
    # `from .x import y` may import the submodule x.y or a name y of x
    return [prefix] + [f'{prefix}.{alias.name}' for alias in node.names]


def import_graph():
    """{module: set of project modules it imports}, and the function-local project imports."""
    known = {_module_name(p): p for p in _project_files()}
    graph, local = {}, []
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding='utf-8'))
        is_package = path.name == '__init__.py'
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(name, is_package, node)
            else:
                continue
            targets = [t for t in targets if _is_project(t) and t in known]
            edges.update(t for t in targets if t != name)
            if targets and node.col_offset > 0:
                local.append(f'{path.relative_to(ROOT)}:{node.lineno}')
        graph[name] = edges
    return graph, local


def _layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + '.') for p in prefixes):
            return i
    if module == 'miscc':
        return 0
    raise AssertionError(f'{module} belongs to no layer of LAYERS')


def test_no_function_local_imports_of_project_modules():
    _, local = import_graph()
    assert local == []


def test_no_import_cycles():
    graph, _ = import_graph()
    state = {}

    def visit(node, stack):
        state[node] = 'open'
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError('import cycle: ' + ' -> '.join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 'done'
    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_layers_import_only_downwards():
    graph, _ = import_graph()
    upward = [f'{a} -> {b}' for a, targets in graph.items() for b in targets
              if b != 'miscc' and _layer(b) > _layer(a)]
    assert upward == []


def test_models_depend_on_torch_only():
    graph, _ = import_graph()
    assert {b for a, targets in graph.items() if a.startswith('models') for b in targets
            if not b.startswith('models')} == set()


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_are_thin(script):
    tree = ast.parse((ROOT / script).read_text(encoding='utf-8'))
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert defs == [] and len((ROOT / script).read_text().splitlines()) < 25


def test_the_checker_finds_a_cycle_and_a_local_import(tmp_path, monkeypatch):
    """The checks above can fail: a planted cycle and a function-local import are reported."""
    pkg = tmp_path / 'miscc'
    (pkg / 'core').mkdir(parents=True)
    (tmp_path / 'models').mkdir()
    (tmp_path / 'datasets.py').write_text('')
    (pkg / '__init__.py').write_text('')
    (pkg / 'core' / '__init__.py').write_text('')
    (pkg / 'core' / 'a.py').write_text('from . import b\n')
    (pkg / 'core' / 'b.py').write_text('def f():\n    from .a import x\n')
    monkeypatch.setattr(sys.modules[__name__], 'ROOT', tmp_path)
    graph, local = import_graph()
    assert local == ['miscc/core/b.py:2']
    with pytest.raises(AssertionError, match='import cycle: miscc.core.a -> miscc.core.b -> miscc.core.a'):
        test_no_import_cycles()
