"""Write N synthetic short video clips (mp4) and their manifest for the vat workload.

    python benchmarks/make_clips.py --out benchmarks/data/clips --num_clips 64 \\
        --frames 8 16 --fps 4 --size 336x448

Clip i comes from seed ``--seed + i`` (a scrolling noise texture under moving shapes: every
clip distinct), its frame count cycles through ``--frames`` (1-4 s at ``--fps``). The manifest
(``manifest.json``) lists file, frames, fps, size [height, width] and seed per clip.
In memory, for an in-process engine: ``make_clip_arrays(num_clips, num_frames, size, seed)``.
"""

from __future__ import annotations

import argparse
import time

from replay.clips import (  # noqa: F401  (re-exported: the importable API)
    ClipInfo,
    encode_mp4,
    load_manifest,
    make_clip_arrays,
    parse_size,
    read_clip,
    synth_clip,
    write_clips,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for the clips and manifest.json")
    p.add_argument("--num_clips", "--num-clips", type=int, default=32)
    p.add_argument("--frames", type=int, nargs="+", default=[8], help="frame counts, cycled")
    p.add_argument("--fps", type=float, default=4.0)
    p.add_argument("--size", type=parse_size, default=(336, 448), help="HEIGHTxWIDTH, even")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> list[ClipInfo]:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    clips = write_clips(args.out, args.num_clips, args.frames, args.fps, args.size, args.seed)
    seconds = time.perf_counter() - start
    print(f"wrote {len(clips)} clips to {args.out} in {seconds:.1f} s")
    return clips


if __name__ == "__main__":
    main()
