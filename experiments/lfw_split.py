"""The project's fixed split of LFW people into train / validation / test, and LFW pair sampling.

    python -m experiments.lfw_split --lfw=../shared/faces/lfw    # checks the committed list, prints the counts

LFW (`../shared/faces/lfw`, `<Name>/<Name>_NNNN.jpg`) is experiment data only: never shipped.
People with >= 3 photos (what the method averages) are split by identity with a fixed seed:
TEST_PEOPLE of them are the test people, never trained on and never used to tune anything; their
names are committed (`lfw_test_people.txt`) so the split is reproducible and a changed copy of LFW
is noticed. Everyone else (including people with fewer photos) may be used for training,
validation and calibration (e.g. the FaceNet threshold in benchmarks/facenet_lfw.py).
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

TEST_PEOPLE = 120
VALIDATION_PEOPLE = 60
SEED = 0
MIN_PHOTOS = 3
TEST_LIST = pathlib.Path(__file__).with_name("lfw_test_people.txt")


def lfw_people(root) -> dict:
    """{name: [photo paths, sorted]} for every identity folder under root."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no LFW folder here (expected <root>/<Name>/<Name>_NNNN.jpg)")
    people = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if photos:
            people[folder.name] = photos
    return people


def split_people(people: dict, seed: int = SEED) -> dict:
    """{"train", "validation", "test": sorted names} over people with >= MIN_PHOTOS photos, plus
    "other": people with fewer (never test people)."""
    eligible = sorted(name for name, photos in people.items() if len(photos) >= MIN_PHOTOS)
    order = np.random.default_rng(seed).permutation(len(eligible))
    shuffled = [eligible[i] for i in order]
    test = sorted(shuffled[:TEST_PEOPLE])
    validation = sorted(shuffled[TEST_PEOPLE : TEST_PEOPLE + VALIDATION_PEOPLE])
    train = sorted(shuffled[TEST_PEOPLE + VALIDATION_PEOPLE :])
    other = sorted(name for name, photos in people.items() if len(photos) < MIN_PHOTOS)
    return {"train": train, "validation": validation, "test": test, "other": other}


def load_split(root, check=True) -> tuple:
    """(people, split) for the LFW copy at root; with check, the test people must equal the committed list."""
    people = lfw_people(root)
    split = split_people(people)
    if check and TEST_LIST.exists():
        committed = TEST_LIST.read_text().split()
        if committed != split["test"]:
            missing = sorted(set(committed) - set(split["test"]))[:5]
            raise ValueError(
                f"the LFW copy at {root} gives other test people than {TEST_LIST} (e.g. {missing}): "
                "a different copy of LFW; results would not be comparable"
            )
    return people, split


def sample_pairs(people: dict, names, count: int, seed: int = SEED) -> list:
    """count pairs (path_a, path_b, same), half same-person, drawn with a fixed seed from `names`.

    Same-person pairs: a random person with >= 2 photos, two distinct photos; different-person:
    two distinct people, one photo each. Pairs are unique.
    """
    rng = np.random.default_rng(seed)
    names = list(names)
    with_two = [n for n in names if len(people[n]) >= 2]
    pairs, seen = [], set()
    while len(pairs) < count:
        same = len(pairs) % 2 == 0
        if same:
            name = with_two[rng.integers(len(with_two))]
            a, b = rng.choice(len(people[name]), 2, replace=False)
            pair = (people[name][a], people[name][b])
        else:
            i, j = rng.choice(len(names), 2, replace=False)
            pair = (
                people[names[i]][rng.integers(len(people[names[i]]))],
                people[names[j]][rng.integers(len(people[names[j]]))],
            )
        key = tuple(sorted(map(str, pair)))
        if key in seen:
            continue
        seen.add(key)
        pairs.append((pair[0], pair[1], same))
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "faces" / "lfw"))
    parser.add_argument("--write", action="store_true", help=f"(re)write {TEST_LIST.name} from this copy")
    args = parser.parse_args(argv)
    people, split = load_split(args.lfw, check=not args.write)
    if args.write:
        TEST_LIST.write_text("\n".join(split["test"]) + "\n")
        print(f"wrote {TEST_LIST}")
    for part in ("train", "validation", "test", "other"):
        print(f"{part:<10} {len(split[part]):5d} people {sum(len(people[n]) for n in split[part]):6d} photos")


if __name__ == "__main__":
    main()
