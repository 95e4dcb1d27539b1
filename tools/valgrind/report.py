"""Summarise a valgrind --xml=yes log: every error, and those with a frame in fastconv's _C*.so."""
import re
from collections import Counter
import sys
import xml.etree.ElementTree as ET

OURS = re.compile(r"/fastconv/_C[^/]*\.so$")


def main(path):
    root = ET.parse(path).getroot()
    errors = root.findall("error")
    ours = []
    for error in errors:
        frames = error.findall("./stack/frame")
        if any(OURS.search(f.findtext("obj") or "") for f in frames):
            ours.append(error)
    print(f"valgrind: {len(errors)} error record(s) in all, {len(ours)} with a frame in fastconv's _C*.so")
    others = Counter()
    for error in errors:
        if error not in ours:
            objs = [(f.findtext("obj") or "?").rsplit("/", 1)[-1] for f in error.findall("./stack/frame")]
            others[(error.findtext("kind"), " < ".join(dict.fromkeys(objs))[:110])] += 1
    for (kind, objs), count in others.most_common():
        print(f"  not fastconv: {count:3d} x {kind} in {objs}")
    for error in ours:
        kind = error.findtext("kind")
        what = error.findtext("what") or error.findtext("xwhat/text")
        print(f"\n== {kind}: {what}")
        for frame in error.findall("./stack/frame")[:12]:
            where = frame.findtext("fn") or "?"
            src = f"{frame.findtext('file')}:{frame.findtext('line')}" if frame.findtext("file") else frame.findtext("obj")
            print(f"     {where}  ({src})")
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
