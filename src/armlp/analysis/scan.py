"""The verdict for every function of an image: ``armlp scan``.

Most functions of a program share a handful of prologue shapes, so verdicts
are memoised by the prologue's words: a 20,000-function program needs a few
dozen classifications, the rest is dictionary lookups.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from armlp.analysis.mcount import SITE_WINDOW, McountLocCheck, SiteFinder, check_mcount_loc
from armlp.analysis.prologue import DescribeFn, UndoRecipe, Verdict, classify_arm
from armlp.elf.image import ElfImage
from armlp.elf.symbols import FunctionSymbol
from armlp.errors import AnalysisError

NO_SITE = Verdict(False, reason="no mcount site: not built with -pg, notrace / "
                                "no_instrument_function, or assembly",
                  reason_code="no_mcount_site")
THUMB = Verdict(False, reason="Thumb code (not yet supported; build with -marm)",
                reason_code="thumb")


@dataclass
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
        fn, v = self.fn, self.verdict
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
            "patchable": v.patchable,
            "rule": v.rule,
            "reason": v.reason,
            "reason_code": v.reason_code,
            "undo": v.undo.to_json() if v.undo else None,
        }


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
            "functions": [r.to_json() for r in self.functions],
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
        raise AnalysisError(f"{self.image.path}: {name!r} has no sympos {sympos}")


def analyse_function(image: ElfImage, finder: SiteFinder, fn: FunctionSymbol,
                     cache: dict[tuple[int, ...], Verdict],
                     describe: DescribeFn) -> FunctionReport:
    """Find the site of *fn* and classify its prologue."""
    site = finder.find(fn)
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
    sec = image.sections[fn.section]
    words = finder.words(sec)
    first = (fn.address - sec.addr) >> 2
    prologue = tuple(words[first:first + (offset >> 2)])
    verdict = cache.get(prologue)
    if verdict is None:
        verdict = classify_arm(prologue, describe)
        cache[prologue] = verdict
    return FunctionReport(fn, site, verdict, prologue)


def scan(image: ElfImage, *, progress: Callable[[Iterable[FunctionSymbol]],
                                                Iterable[FunctionSymbol]] | None = None
         ) -> ScanResult:
    """Classify every function of *image*."""
    funcs = sorted(image.symbols.functions(), key=lambda f: (f.section, f.address))
    finder = SiteFinder(image)
    cache: dict[tuple[int, ...], Verdict] = {}
    describe = DescribeFn()
    it: Iterable[FunctionSymbol] = progress(funcs) if progress else funcs
    reports = [analyse_function(image, finder, fn, cache, describe) for fn in it]
    result = ScanResult(image, reports)
    if not finder.has_mcount:
        result.notes.append("no mcount calls in this file: build with -pg to make "
                            "functions patchable")
    if not image.is_relocatable:
        result.mcount_loc = check_mcount_loc(
            image, {r.site for r in reports if r.site is not None})
    return result
