#!/usr/bin/env python3
"""Checks the shape of the code that the architecture asks for:

* no source file under broker/src, operator/src or worker/src is longer than MAX_LINES;
* inside each crate, the files' `use` imports (`crate::…`, `super::…`, `self::…`) form no circle.

A file's imports are read from its `use` statements and the `crate::…` paths written in its code,
outside `#[cfg(test)]` modules and comments; a path is
charged to the deepest module file it names (`crate::state::submit::X` → state/submit.rs if that
file exists, else state/mod.rs or state.rs). `mod` declarations are not imports. Exit status 1 with
one line per problem.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = ["proto", "crd", "broker", "worker", "operator", "bench", "e2e"]
LENGTH_CHECKED = ["broker", "operator", "worker"]
MAX_LINES = 650  # "about 600"

INLINE_RE = re.compile(r"\bcrate(?:::[A-Za-z_][A-Za-z0-9_]*)+")
USE_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", re.M | re.S)


def module_of(src: pathlib.Path, file: pathlib.Path) -> tuple[str, ...]:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    if parts and parts[0] == "bin":
        return ("<bin>", *parts)
    return tuple(parts)


def expand(tree: str) -> list[str]:
    """Expands `a::{b, c::{d, e}}` into ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    out: list[str] = []

    def walk(prefix: str, s: str) -> None:
        i = s.find("{")
        if i < 0:
            out.append(prefix + s)
            return
        head, body = s[:i], s[i + 1 : s.rfind("}")]
        depth, start = 0, 0
        for j, ch in enumerate(body + ","):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                part = body[start:j]
                if part:
                    walk(prefix + head, part)
                start = j + 1

    walk("", tree)
    return [p.split(" as ")[0] for p in out]


def resolve(me: tuple[str, ...], path: str) -> list[str] | None:
    """The module path `path` names, seen from module `me`; None for other crates' paths."""
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] == "crate":
        return segs[1:]
    if segs[0] not in ("super", "self"):
        return None
    # A module's path is the same for `x.rs` and `x/mod.rs`: `self` is it, each `super` drops
    # one segment.
    base = list(me)
    if segs[0] == "self":
        segs = segs[1:]
    while segs and segs[0] == "super":
        segs, base = segs[1:], base[:-1]
    return base + segs


def strip_tests(text: str) -> str:
    m = re.search(r"^\s*#\[cfg\(test\)\]\s*\n\s*(?:pub\s+)?mod\s+\w+\s*\{", text, re.M)
    return text[: m.start()] if m else text


def check_crate(crate: str) -> list[str]:
    src = ROOT / crate / "src"
    if not src.is_dir():
        return []
    files = sorted(p for p in src.rglob("*.rs"))
    modules = {module_of(src, f): f for f in files}
    graph: dict[pathlib.Path, set[pathlib.Path]] = {f: set() for f in files}
    for f in files:
        me = module_of(src, f)
        if me and me[0] == "<bin>":
            continue
        code = strip_tests(f.read_text())
        code = re.sub(r"//[^\n]*", "", code)  # comments and doc links are not imports
        paths = [p for tree in USE_RE.findall(code) for p in expand(tree)]
        # Paths written inline in code (`crate::report::utc_timestamp(…)`) count too.
        paths += INLINE_RE.findall(USE_RE.sub("", code))
        for path in paths:
            target = resolve(me, path)
            if target is None:
                continue
            for n in range(len(target), -1, -1):
                dep = modules.get(tuple(target[:n]))
                if dep is not None:
                    if dep != f:
                        graph[f].add(dep)
                    break
    return [f"{crate}: import circle: " + " -> ".join(str(p.relative_to(ROOT)) for p in c) for c in cycles(graph)]


def cycles(graph: dict) -> list[list]:
    """Strongly connected components with more than one file (Tarjan)."""
    index: dict = {}
    low: dict = {}
    stack: list = []
    on: set = set()
    found: list = []
    counter = [0]

    def visit(v) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def self_test() -> None:
    """The checker finds what it is for, on a made-up crate (so a broken checker cannot pass)."""
    import tempfile

    global ROOT
    saved = ROOT
    with tempfile.TemporaryDirectory() as tmp:
        ROOT = pathlib.Path(tmp)
        src = ROOT / "demo" / "src"
        (src / "state").mkdir(parents=True)
        files = {
            "lib.rs": "mod a;\nmod b;\nmod state;\n",
            "a.rs": "use crate::{b::{B, C as D}, state};\n",
            "b.rs": "pub struct B;\nfn f() { crate::a::g(); }\n",
            "state/mod.rs": "mod model;\npub use self::model::Job;\n",
            "state/model.rs": "pub struct Job;\n#[cfg(test)]\nmod tests {\n    use super::super::*;\n}\n",
            "state/submit.rs": "use super::Job; // crate::a::x in a comment is no import\n",
        }
        for name, text in files.items():
            (src / name).write_text(text)
        found = check_crate("demo")
        assert found == ["demo: import circle: demo/src/a.rs -> demo/src/b.rs"], found
        (src / "b.rs").write_text("pub struct B;\n")
        assert check_crate("demo") == []
        (src / "state" / "model.rs").write_text("use super::submit::X;\n")
        (src / "state" / "submit.rs").write_text("use crate::state::model::Job;\n")
        found = check_crate("demo")
        assert found == ["demo: import circle: demo/src/state/model.rs -> demo/src/state/submit.rs"], found
    ROOT = saved


def main() -> int:
    self_test()
    problems: list[str] = []
    for crate in LENGTH_CHECKED:
        for f in sorted((ROOT / crate / "src").rglob("*.rs")):
            n = sum(1 for _ in f.open())
            if n > MAX_LINES:
                problems.append(f"{f.relative_to(ROOT)}: {n} lines (at most {MAX_LINES}: split it along a seam)")
    for crate in CRATES:
        problems += check_crate(crate)
    for p in problems:
        print(p)
    if not problems:
        print(f"layout ok: no file over {MAX_LINES} lines in {', '.join(LENGTH_CHECKED)}; no import circle in {', '.join(CRATES)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
