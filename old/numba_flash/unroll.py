"""``static_range``: loops unrolled in the source before Numba compiles it (Triton's ``tl.static_range``).

Register fragments (``cuda.local.array``) stay in registers only if every index is a compile-time
constant, which needs every loop over them fully unrolled. LLVM unrolls small loops by itself but
gives up when the body grows (the dropout variant, head_dim 128), and the arrays then live in
local memory. Numba has no unroll pragma, so :func:`unrolled` rewrites the function's syntax tree:

    for j in static_range(NT):        ->   body with j = 0
        body                                body with j = 1 ...

``NT`` must be computable from ``constants``; nested static loops unroll from the outside in.
Everything else about the function is unchanged (its globals and closure values stay visible).
"""

from __future__ import annotations

import ast
import copy
import inspect
import textwrap


def static_range(*args):
    """``range`` for loops that :func:`unrolled` expands; plain ``range`` when not rewritten."""
    return range(*args)


class _Substitute(ast.NodeTransformer):
    def __init__(self, name, value):
        self.name, self.value = name, value

    def visit_Name(self, node):
        if node.id == self.name and isinstance(node.ctx, ast.Load):
            return ast.copy_location(ast.Constant(self.value), node)
        return node


class _Unroll(ast.NodeTransformer):
    def __init__(self, constants):
        self.constants = constants

    def visit_For(self, node):
        it = node.iter
        if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "static_range"):
            return self.generic_visit(node)
        if node.orelse or not isinstance(node.target, ast.Name):
            raise SyntaxError("static_range loops take one name and no else clause")
        bounds = [eval(compile(ast.Expression(a), "<static_range>", "eval"), {}, dict(self.constants))
                  for a in it.args]
        out = []
        for i in range(*bounds):
            for stmt in node.body:
                stmt = _Substitute(node.target.id, i).visit(copy.deepcopy(stmt))
                stmt = self.visit(stmt)
                out.extend(stmt if isinstance(stmt, list) else [stmt])
        return out or [ast.Pass()]


def unrolled(fn, constants: dict):
    """``fn`` recompiled with every ``static_range`` loop expanded; ``constants`` are the names its
    bounds use (they stay visible to the body too)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    func = tree.body[0]
    func.decorator_list = []
    tree = ast.fix_missing_locations(_Unroll(constants).visit(tree))
    namespace = dict(fn.__globals__)
    if fn.__closure__:
        namespace.update(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))
    namespace.update(constants)
    filename = f"<unrolled {fn.__module__}.{fn.__qualname__}>"
    exec(compile(tree, filename, "exec"), namespace)
    new = namespace[func.name]
    new.__doc__ = fn.__doc__
    return new
