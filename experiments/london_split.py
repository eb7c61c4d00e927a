"""The fixed split of the FRL London Set's people into train / validation / test.

    python -m experiments.london_split [--london=../shared/faces/london]   # checks the committed lists

`../shared/faces/london` (71 people, each `<id>/<id>_neutral.jpg` and `<id>/<id>_smiling.jpg`, CC BY
4.0, see its README) is experiment data. Its people are split by identity with a fixed seed,
stratified by `info.csv`'s ethnicity so that every group has test people: about 30% of each group
are test people (never in data prep or training, never used to tune), 15% validation (where
recipes are chosen), the rest may be trained on. The test and validation ids are committed
(`london_test_people.txt`, `london_validation_people.txt`); a changed copy of the set is noticed.
"""

from __future__ import annotations

import argparse
import csv
import pathlib

import numpy as np

SEED = 0
TEST_SHARE = 0.3
VALIDATION_SHARE = 0.15
HERE = pathlib.Path(__file__).parent
TEST_LIST = HERE / "london_test_people.txt"
VALIDATION_LIST = HERE / "london_validation_people.txt"
DEFAULT_ROOT = HERE.parents[0].parent / "shared" / "faces" / "london"


def london_info(root) -> dict:
    """{face_id: {"age", "gender", "ethnicity"}} for the people with both photos under root."""
    root = pathlib.Path(root)
    if not (root / "info.csv").exists():
        raise FileNotFoundError(f"{root}: no London set here (expected info.csv and <id>/<id>_neutral.jpg)")
    with (root / "info.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    return {
        row["face_id"]: {
            "age": int(row["face_age"]) if row["face_age"].isdigit() else None,
            "gender": row["face_gender"],
            "ethnicity": row["face_eth"],
        }
        for row in rows
        if all((root / row["face_id"] / f"{row['face_id']}_{kind}.jpg").exists() for kind in ("neutral", "smiling"))
    }


def split_people(info: dict, seed: int = SEED) -> dict:
    """{"train", "validation", "test": sorted ids}: within each ethnicity, a seeded shuffle; the first
    round(30%) (at least one) are test people, the next round(15%) validation."""
    rng = np.random.default_rng(seed)
    split = {"train": [], "validation": [], "test": []}
    for group in sorted({person["ethnicity"] for person in info.values()}):
        members = sorted(face_id for face_id, person in info.items() if person["ethnicity"] == group)
        members = [members[i] for i in rng.permutation(len(members))]
        test = max(1, round(TEST_SHARE * len(members)))
        validation = round(VALIDATION_SHARE * len(members))
        split["test"] += members[:test]
        split["validation"] += members[test : test + validation]
        split["train"] += members[test + validation :]
    return {name: sorted(ids) for name, ids in split.items()}


def load_split(root=DEFAULT_ROOT, check=True) -> tuple:
    """(info, split); with check, the test and validation ids must equal the committed lists."""
    info = london_info(root)
    split = split_people(info)
    if check:
        for name, path in (("test", TEST_LIST), ("validation", VALIDATION_LIST)):
            if path.exists() and path.read_text().split() != split[name]:
                raise ValueError(f"{root}: its {name} people differ from {path.name}: another copy of the London set?")
    return info, split


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--london", default=str(DEFAULT_ROOT))
    parser.add_argument("--write", action="store_true", help="(Re)write the committed lists.")
    args = parser.parse_args()
    info, split = load_split(args.london, check=not args.write)
    if args.write:
        TEST_LIST.write_text("\n".join(split["test"]) + "\n")
        VALIDATION_LIST.write_text("\n".join(split["validation"]) + "\n")
    for name, ids in split.items():
        groups = {}
        for face_id in ids:
            groups[info[face_id]["ethnicity"]] = groups.get(info[face_id]["ethnicity"], 0) + 1
        print(f"{name}: {len(ids)} people {dict(sorted(groups.items()))}")


if __name__ == "__main__":
    main()
