"""The verdict for every function of an image: ``armlp scan``.

Most functions of a program share a handful of prologue shapes, so verdicts
are memoised by the prologue's words: a 20,000-function program needs a few
dozen classifications, the rest is dictionary lookups.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str
from operator import attrgetter

from armlp.analysis.mcount import SITE_WINDOW, McountLocCheck, SiteFinder, check_mcount_loc
from armlp.analysis.prologue import DescribeFn, UndoRecipe, Verdict, classify_arm
from armlp.elf.image import ElfImage
from armlp.elf.symbols import FunctionSymbol
from armlp.errors import AnalysisError

NO_SITE = Verdict(False, reason="no mcount site (notrace, built without -pg, or assembly)",
                  reason_code="no_mcount_site")
THUMB = Verdict(False, reason="Thumb code (not yet supported; build with -marm)",
                reason_code="thumb")


@dataclass(slots=True)
class FunctionReport:
    """Everything scan knows about one function."""

    fn: FunctionSymbol
    site: int | None
    verdict: Verdict
    prologue: tuple[int, ...] = ()

    @property
    def undo(self) -> UndoRecipe | None:
        return self.verdict.undo

    def to_json(self) -> dict[str, object]:
        fn = self.fn
        return {
            "name": fn.name,
            "sympos": fn.sympos,
            "address": fn.address,
            "size": fn.size,
            "section": fn.section_name,
            "binding": fn.binding,
            "mode": fn.mode,
            "mcount_site": self.site,
            "site_offset": None if self.site is None else self.site - fn.address,
            **_verdict_json(self.verdict),
        }


def _verdict_json(v: Verdict) -> dict[str, object]:
    """The verdict's part of a function's JSON entry (its last keys)."""
    return {
        "patchable": v.patchable,
        "rule": v.rule,
        "reason": v.reason,
        "reason_code": v.reason_code,
        "undo": v.undo.to_json() if v.undo else None,
    }


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _functions_json_text(reports: list[FunctionReport]) -> str:
    """``_dumps([r.to_json() for r in reports])``, the same text built faster.

    Thousands of functions share a few dozen verdicts, so each verdict is
    encoded once and each function is one format string: a 20,000-function
    image takes a tenth of the time of encoding the dicts.
    """
    verdicts: dict[int, str] = {}       # id(verdict) -> its encoded keys
    strings: dict[str, str] = {}        # section, binding, mode -> JSON string
    parts: list[str] = []
    append = parts.append
    for r in reports:
        fn, v, site = r.fn, r.verdict, r.site
        tail = verdicts.get(id(v))
        if tail is None:
            tail = verdicts[id(v)] = _dumps(_verdict_json(v))[1:-1]
        sec, bind, mode = fn.section_name, fn.binding, fn.mode
        sec = strings.get(sec) or strings.setdefault(sec, _json_str(sec))
        bind = strings.get(bind) or strings.setdefault(bind, _json_str(bind))
        mode = strings.get(mode) or strings.setdefault(mode, _json_str(mode))
        where = ("null,\"site_offset\":null" if site is None
                 else f"{site},\"site_offset\":{site - fn.address}")
        append(f'{{"name":{_json_str(fn.name)},"sympos":{fn.sympos},"address":{fn.address},'
               f'"size":{fn.size},"section":{sec},"binding":{bind},"mode":{mode},'
               f'"mcount_site":{where},{tail}}}')
    return f"[{','.join(parts)}]"


@dataclass
class ScanResult:
    """The verdicts of one image, plus what the image says of itself."""

    image: ElfImage
    functions: list[FunctionReport]
    mcount_loc: McountLocCheck | None = None
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for r in self.functions:
            if r.verdict.patchable:
                c[f"patchable/{r.verdict.rule}"] += 1
            else:
                c[f"unpatchable/{r.verdict.reason_code}"] += 1
        return dict(sorted(c.items()))

    @property
    def patchable(self) -> int:
        return sum(1 for r in self.functions if r.verdict.patchable)

    @property
    def with_site(self) -> int:
        return sum(1 for r in self.functions if r.site is not None)

    def summary(self) -> dict[str, object]:
        total = len(self.functions)
        sites = self.with_site
        return {
            "functions": total,
            "with_mcount_site": sites,
            "patchable": self.patchable,
            "coverage_percent": round(100.0 * self.patchable / sites, 2) if sites else 0.0,
            "by_verdict": self.counts(),
        }

    def to_json(self) -> dict[str, object]:
        return {**self._json_header(), "functions": [r.to_json() for r in self.functions]}

    def to_json_text(self) -> str:
        """``json.dumps(self.to_json(), separators=(",", ":"))``, built faster."""
        head = _dumps({**self._json_header(), "functions": None})
        assert head.endswith('"functions":null}')
        return f"{head[:-5]}{_functions_json_text(self.functions)}}}"

    def _json_header(self) -> dict[str, object]:
        """Every key of :meth:`to_json` but ``functions`` (which comes last)."""
        img = self.image
        loc = self.mcount_loc
        return {
            "file": str(img.path),
            "kind": img.kind,
            "build_id": img.build_id,
            "summary": self.summary(),
            "mcount_loc": None if loc is None else {
                "entries": loc.entries, "agrees": loc.agrees,
                "only_in_table": loc.only_in_table, "only_decoded": loc.only_decoded},
            "notes": self.notes,
        }

    def find(self, name: str, sympos: int | None = None) -> FunctionReport:
        """The report of function *name* (kernel sympos rules)."""
        same = [r for r in self.functions if r.fn.name == name]
        if not same:
            raise AnalysisError(f"{self.image.path}: no function named {name!r}")
        if not sympos:
            if len(same) > 1:
                raise AnalysisError(f"{self.image.path}: {name!r} is ambiguous: {len(same)} "
                                    f"functions share the name; give NAME,SYMPOS with "
                                    f"SYMPOS 1..{len(same)}")
            return same[0]
        for r in same:
            if r.fn.sympos == sympos:
                return r
        if sympos == 1 and len(same) == 1:    # kernel rule: a unique name is also sympos 1
            return same[0]
        raise AnalysisError(f"{self.image.path}: {name!r} has no sympos {sympos}")


class _Classifier:
    """Gives one function's report from its site; memoises verdicts by the
    prologue's words and keeps the current section's words at hand."""

    def __init__(self, image: ElfImage, finder: SiteFinder,
                 cache: dict[tuple[int, ...], Verdict] | None = None,
                 describe: DescribeFn | None = None) -> None:
        self.image = image
        self.finder = finder
        self.cache = {} if cache is None else cache
        self.describe = describe or DescribeFn()
        self._section = -1
        self._base = 0
        self._words: Sequence[int] = ()

    def __call__(self, fn: FunctionSymbol, site: int | None) -> FunctionReport:
        if site is None:
            return FunctionReport(fn, None, NO_SITE)
        if fn.mode == "thumb":
            return FunctionReport(fn, site, THUMB)
        offset = site - fn.address
        if offset > SITE_WINDOW:
            return FunctionReport(fn, site, Verdict(
                False, reason=f"mcount site at +{offset:#x} is too far from the entry "
                              f"(window {SITE_WINDOW} bytes): code runs before the hook",
                reason_code="site_too_far"))
        if fn.section != self._section:
            sec = self.image.sections[fn.section]
            self._section, self._base, self._words = fn.section, sec.addr, self.finder.words(sec)
        first = (fn.address - self._base) >> 2
        prologue = tuple(self._words[first:first + (offset >> 2)])
        verdict = self.cache.get(prologue)
        if verdict is None:
            verdict = self.cache[prologue] = classify_arm(prologue, self.describe)
        return FunctionReport(fn, site, verdict, prologue)


def analyse_function(image: ElfImage, finder: SiteFinder, fn: FunctionSymbol,
                     cache: dict[tuple[int, ...], Verdict],
                     describe: DescribeFn) -> FunctionReport:
    """Find the site of *fn* and classify its prologue."""
    return _Classifier(image, finder, cache, describe)(fn, finder.find(fn))


def scan(image: ElfImage, *, progress: Callable[[list[FunctionSymbol]],
                                                Iterable[FunctionSymbol]] | None = None
         ) -> ScanResult:
    """Classify every function of *image*."""
    funcs = sorted(image.symbols.functions(), key=attrgetter("section", "address"))
    finder = SiteFinder(image)
    sites = finder.find_all(funcs)
    it: Iterable[FunctionSymbol] = progress(funcs) if progress else funcs
    reports = list(map(_Classifier(image, finder), it, sites))
    result = ScanResult(image, reports)
    if not finder.has_mcount:
        result.notes.append("no mcount calls in this file: build with -pg to make "
                            "functions patchable")
    if not image.is_relocatable:
        result.mcount_loc = check_mcount_loc(image, {s for s in sites if s is not None})
    return result
