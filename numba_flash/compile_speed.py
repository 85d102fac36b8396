"""Faster Numba compiles of the unrolled kernels: five numba-cuda steps made linear (or nearly).

The tensor-core kernels are unrolled into straight-line blocks of thousands of statements
(:mod:`numba_flash.unroll`), and several steps of numba-cuda 0.30 are quadratic in that size or
sweep the whole function more often than they need:

* ``Lower._find_singly_assigned_variable`` scans a variable's whole defining block once per variable,
  to count its assignments. Profiled on the head_dim-128 forward default with CI's wheels, it took 34
  of the compile's 158 s (NVVM and ptxas together: under 2 s; the rest is Numba's other passes).
* ``ir_utils.fixup_var_define_in_scope`` (run by ``untyped_passes``) checks every variable against the
  scope of every block, though the blocks share one scope: 10 s there.
* ``analysis.compute_live_map`` (variable liveness, run by several passes) repeats two whole-function
  fix-point sweeps until nothing changes, each pass uniting every block's (large) sets again. On the
  same kernel, with the first two in place, it took 10.4 of the compile's 31.4 s. The version here
  solves the same two equations with worklists that pass on only what is new, over bit sets.
* ``ssa._run_ssa`` (SSA reconstruction) rewrites every block of the function twice for each variable
  assigned more than once (~100 in an unrolled kernel), though a variable appears in few blocks: 3.75
  of the same compile's 21.5 s. The version here rewrites only the blocks that define or use the
  variable and copies the others' statement lists as they are, which is what the rewrite returns for them.
* ``ssa._FixSSAVars._stmt_index`` finds a statement's position in its block by scanning the block, once
  per use and once per candidate definition: quadratic in the long unrolled block (1.2 of the 2.15 s
  left in SSA). The version here looks positions up in a table built once per block and handler.

:func:`install` replaces each with the same computation done with less repetition. It patches only the
implementations it was written against (the SHA-256 of their source, and of the helpers a replacement
relies on, below): another numba-cuda keeps its own. ``NUMBA_FLASH_NO_COMPILE_PATCH=1`` leaves numba-cuda alone (for comparisons);
``tests/test_tc.py`` checks on a tensor-core kernel that both give the same results and the same PTX.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections import Counter, defaultdict, deque


def _find_singly_assigned_variable(self):
    """numba-cuda's, with each defining block's assignments counted once (not once per variable)."""
    from numba.cuda.core import ir
    from numba.cuda.core.analysis import compute_use_defs, must_use_alloca

    blocks = self.func_ir.blocks
    sav = set()
    if not self.func_ir.func_id.is_generator:
        use_defs = compute_use_defs(blocks)
        alloca_vars = must_use_alloca(blocks)
        var_assign_map = defaultdict(set)
        for blk, vl in use_defs.defmap.items():
            for var in vl:
                var_assign_map[var].add(blk)
        used = set()
        for vl in use_defs.usemap.values():
            used.update(vl)
        counts = {}  # defining block -> how many times each name is assigned there
        for var, where in var_assign_map.items():
            # defined in one block, used in no other, assigned once there
            if var not in alloca_vars and len(where) == 1 and var not in used:
                [defblk] = where
                if defblk not in counts:
                    counts[defblk] = Counter(stmt.target.name for stmt in self.blocks[defblk].find_insts(ir.assign_types))
                if counts[defblk][var] == 1:
                    sav.add(var)
    self._singly_assigned_vars = sav
    self._blk_local_varmap = {}


def _fixup_var_define_in_scope(blocks):
    """numba-cuda's, visiting each distinct scope once (not once per block)."""
    used_var = {}
    for blk in blocks.values():
        for inst in blk.body:
            for var in inst.list_vars():
                used_var[var] = inst
    seen = []
    for blk in blocks.values():
        scope = blk.scope
        if any(scope is s for s in seen):
            continue
        seen.append(scope)
        for var in used_var.keys():
            if var.name not in scope.localvars:
                scope.localvars.define(var.name, var)


def _compute_live_map(cfg, blocks, var_use_map, var_def_map):
    """numba-cuda's, as worklists over bit sets instead of repeated whole-function sweeps over Python
    sets; the same least fix-points:

    * reach[b]: the variables used or defined in any block from which b can be reached (b included),
      propagated only from the blocks of ``var_def_map``, as numba-cuda's sweep goes over those;
    * live[b] (the result): use[b], and for each edge p -> b, (live[b] & reach[p]) - def[p] in live[p].

    Both are unions over edges, so passing on just the bits a block gained gives the same sets. A set of
    variables is a Python int with one bit per name (reach[b] of a late block in an unrolled kernel
    holds most of the function's thousands of names: as ints, a union is a few hundred words)."""
    names = list(dict.fromkeys(n for m in (var_use_map, var_def_map) for v in m.values() for n in v))
    index = {n: i for i, n in enumerate(names)}
    size = (len(names) + 7) // 8

    def bits(vs) -> int:
        raw = bytearray(size)
        for n in vs:
            i = index[n]
            raw[i >> 3] |= 1 << (i & 7)
        return int.from_bytes(raw, "little")

    def members(x: int) -> set:
        out = set()
        while x:
            low = x & -x
            out.add(names[low.bit_length() - 1])
            x ^= low
        return out

    uses = {b: bits(v) for b, v in var_use_map.items()}
    defs = {b: bits(v) for b, v in var_def_map.items()}

    nodes = var_def_map
    reach = defaultdict(int)
    for b in nodes:
        reach[b] |= defs[b] | uses[b]
    delta = {b: reach[b] for b in nodes}
    work = deque(nodes)
    while work:
        b = work.popleft()
        new_b = delta.pop(b)
        for s, _ in cfg.successors(b):
            new = new_b & ~reach[s]
            if new:
                reach[s] |= new
                if s in nodes:
                    if s in delta:
                        delta[s] |= new
                    else:
                        delta[s] = new
                        work.append(s)

    live = {b: uses[b] for b in blocks.keys()}
    delta = dict(live)
    work = deque(reversed(list(live)))  # a backward problem: later blocks first
    while work:
        b = work.popleft()
        new_b = delta.pop(b)
        for p, _ in cfg.predecessors(b):
            new = new_b & reach[p] & ~defs[p] & ~live[p]
            if new:
                live[p] |= new
                if p in delta:
                    delta[p] |= new
                else:
                    delta[p] = new
                    work.append(p)
    return {b: members(x) for b, x in live.items()}


def _ssa_rewrite(blocks, states, handler, labels):
    """numba-cuda's ``ssa._run_block_rewrite``, run only on the blocks in ``labels``: its handlers return
    every statement of a block that neither defines nor uses ``states["varname"]`` unchanged, and touch
    no state for it."""
    from numba.cuda.core import ir
    from numba.cuda.core.ssa import _run_ssa_block_pass

    newblocks = {}
    for label, blk in blocks.items():
        newblk = ir.Block(scope=blk.scope, loc=blk.loc)
        if label in labels:
            states["label"] = label
            states["block"] = blk
            newbody = []
            for stmt in _run_ssa_block_pass(states, blk, handler):
                assert stmt is not None
                newbody.append(stmt)
            newblk.body = newbody
        else:
            newblk.body = list(blk.body)
        newblocks[label] = newblk
    return newblocks


def _run_ssa(blocks):
    """numba-cuda's ``ssa._run_ssa`` (with its ``_fresh_vars`` and ``_fix_ssa_vars``), each variable's two
    rewrites confined to the blocks that define or use it. Those blocks are found once, before any
    rewrite: fixing one variable renames only that variable and adds phi nodes of its own, so the blocks
    that mention another one stay the same."""
    from numba.cuda.core import errors, ssa
    from numba.cuda.core.analysis import compute_cfg_from_blocks

    if not blocks:
        return {}
    cfg = compute_cfg_from_blocks(blocks)
    df_plus = ssa._iterated_domfronts(cfg)
    violators = ssa._find_defs_violators(blocks, cfg)
    defs, uses = defaultdict(list), defaultdict(set)
    ssa._run_block_analysis(blocks, dict(defs=defs, uses=uses), ssa._GatherDefsHandler())
    cache_list_vars = ssa._CacheListVars()
    for varname in violators:
        labels = {label for _, label in defs[varname]} | uses[varname]
        # the left-hand sides: a fresh name for each assignment after the first (ssa._fresh_vars)
        states = ssa._make_states(blocks)
        states["varname"] = varname
        states["defmap"] = defmap = defaultdict(list)
        blocks = _ssa_rewrite(blocks, states, ssa._FreshVarHandler(), labels)
        # the uses: each to its reaching definition, with phi nodes where paths meet (ssa._fix_ssa_vars)
        states = ssa._make_states(blocks)
        states["varname"] = varname
        states["defmap"] = defmap
        states["phimap"] = phimap = defaultdict(list)
        states["cfg"] = cfg
        states["phi_locations"] = ssa._compute_phi_locations(df_plus, defmap)
        blocks = _ssa_rewrite(blocks, states, ssa._FixSSAVars(cache_list_vars), labels)
        for label, philist in phimap.items():
            curblk = blocks[label]
            curblk.body = philist + curblk.body
    if compute_cfg_from_blocks(blocks) != cfg:
        raise errors.CompilerError("CFG mutated in SSA pass")
    return blocks


def _stmt_index(self, defstmt, block, stop=-1):
    """numba-cuda's (the first position of ``defstmt`` among ``block.body[:stop]``, else the body's
    length), from a table of first positions built once per block body; a table entry is used only
    when the body still holds ``defstmt`` there, and a statement not in the table is scanned for as
    numba-cuda scans."""
    body = block.body
    table = getattr(self, "_numba_flash_positions", None)
    if table is None or table[0] is not body:
        table = self._numba_flash_positions = (body, _first_positions(body))
    i = table[1].get(id(defstmt))
    if i is not None and (i >= len(body) or body[i] is not defstmt):  # the list changed: index it again
        table = self._numba_flash_positions = (body, _first_positions(body))
        i = table[1].get(id(defstmt))
    searched = range(len(body))[:stop]
    if i is None:
        for j in searched:
            if body[j] is defstmt:
                return j
        return len(body)
    return i if i in searched else len(body)


def _first_positions(body) -> dict:
    """id of each statement -> its first position in ``body``."""
    out = {}
    for i, stmt in enumerate(body):
        out.setdefault(id(stmt), i)
    return out


def _targets():
    """(owner, attribute, replacement, SHA-256 of numba-cuda 0.30.4's source of the original[, the other
    functions and classes whose source the digest covers too])."""
    from numba.cuda import lowering
    from numba.cuda.core import analysis, ir_utils, ssa, untyped_passes

    live_map = "cdb51290c1658e9296610f99cb7c5bd51fbc2610822b3cedab72c4d86b4fc7c2"
    run_ssa = "d179b5c5e876ab5af53a5c740bd0afc41a467c079e67332478e8d84436c958d5"
    stmt_index = "16ee1e1b84752e043e261e8e62957b7c7b4fbeb1b758666e22bb1f938a47382a"
    return [(lowering.Lower, "_find_singly_assigned_variable", _find_singly_assigned_variable,
             "c3b499f76517288510a5188fbb59bb96f7ca7d619b0cf4245b5f66a8bd90bbe4"),
            (untyped_passes, "fixup_var_define_in_scope", _fixup_var_define_in_scope,
             "19e4d8d64a2fb063a62c4760097e977c81f84b5782e3dadebe2b10bee844536c"),
            # postproc calls it through the module, ir_utils imported it by name
            (analysis, "compute_live_map", _compute_live_map, live_map),
            (ir_utils, "compute_live_map", _compute_live_map, live_map),
            # what the replacement re-states or relies on is part of its guard: the pass itself, the two
            # steps it inlines, the rewrite it confines, and the handlers whose no-op it counts on
            (ssa, "_run_ssa", _run_ssa, run_ssa, (ssa._fresh_vars, ssa._fix_ssa_vars, ssa._run_block_rewrite,
                                                 ssa._FreshVarHandler, ssa._FixSSAVars, ssa._GatherDefsHandler)),
            (ssa._FixSSAVars, "_stmt_index", _stmt_index, stmt_index)]


def originals() -> dict:
    """numba-cuda's own implementations by name (those :func:`install` replaced, where it did)."""
    try:
        targets = _targets()
    except Exception:  # no numba-cuda compiler to patch
        return {}
    out = {}
    for owner, name, new, *_ in targets:
        fn = vars(owner).get(name)
        out[name] = getattr(fn, "numba_flash_replaced", fn)
    return out


def _digest(*objects) -> str:
    """SHA-256 of the source of ``objects``, one after another."""
    return hashlib.sha256("".join(inspect.getsource(o) for o in objects).encode()).hexdigest()


def install() -> list[str]:
    """Put the linear versions in place; the names of those in place (now or already)."""
    if os.environ.get("NUMBA_FLASH_NO_COMPILE_PATCH"):
        return []
    try:
        targets = _targets()
    except Exception:
        return []
    done = []
    for owner, name, new, known, *also in targets:
        current = vars(owner).get(name)
        if current is new:
            done.append(name)
            continue
        try:
            digest = _digest(current, *(also[0] if also else ()))
        except (OSError, TypeError):
            continue
        if digest == known:
            new.numba_flash_replaced = current
            setattr(owner, name, new)
            done.append(name)
    return done
