# Prints the share of the project's Rust lines that live in udn-bins/src (issue 18 asks
# for under 35%). Counted: every .rs file outside target/ and tests/ directories, up to
# the file's trailing `#[cfg(test)] mod ...` block (unit tests are tests too). Docs and
# data are not Rust files and so are not counted. Run from anywhere:
#   python3 scripts/line-share.py
import os
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
os.chdir(root)
total = 0
bins = 0
for dirpath, dirs, files in os.walk("."):
    dirs[:] = [d for d in dirs if d not in ("target", ".git", "tests")]
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(dirpath, f)
        lines = open(path, encoding="utf-8").read().split("\n")
        n = 0
        for i, line in enumerate(lines):
            if line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and lines[i + 1].startswith("mod "):
                break
            n += 1
        total += n
        if path.startswith("./udn-bins/src/"):
            bins += n
share = 100.0 * bins / total if total else 0.0
print(f"udn-bins/src: {bins} of {total} lines ({share:.1f}%)")
sys.exit(0)
