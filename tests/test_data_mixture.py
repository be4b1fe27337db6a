"""Tests for afnext.data.mixture (registry, expressions, sampler) and afnext.data.loader (skipping loader)."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from afnext.data.loader import ManifestDataset, SampleError, SkippingLoader
from afnext.data.manifest import Record
from afnext.data.mixture import (
    DatasetSpec,
    Mixture,
    MixtureError,
    MixtureSampler,
    Registry,
    Term,
    build_mixture,
    parse_mixture,
    resolve_mixture,
)

SR = 16_000


from conftest import write_wav  # noqa: E402


def conv(q="<sound>\nDescribe.", a="Noise."):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def text_manifest(path: Path, name: str, n: int) -> Path:
    """n text-only records (mixtures never open audio)."""
    path.write_text("".join(json.dumps({"id": f"{name}{i}", "conversations": conv("q", "a")}) + "\n"
                            for i in range(n)))
    return path


# ----------------------------------------------------------------------------- expressions


def test_parse_mixture_terms():
    terms = parse_mixture(" a*2 + b#50+c+d#12.5 ")
    assert [(t.name, t.repeat, t.percent) for t in terms] == [
        ("a", 2, None), ("b", None, 50), ("c", None, None), ("d", None, 12.5)]
    assert terms[1].text == "b#50" and terms[1].position == 7
    assert parse_mixture("AudioSkills-QA.v2/part_1*3")[0].name == "AudioSkills-QA.v2/part_1"


@pytest.mark.parametrize("expr,message", [
    ("", "empty mixture expression"),
    ("a++b", "term 2 .at character 2. is empty"),
    ("a+", "term 2 .* is empty"),
    ("*2", "has no dataset name"),
    ("a*0", "bad repeat count '0'"),
    ("a*1.5", "bad repeat count '1.5'.*use #P"),
    ("a*", "bad repeat count ''"),
    ("a*x", "bad repeat count 'x'"),
    ("a#0", r"percentage must be in \(0, 100\], got 0"),
    ("a#150", "got 150; use \\*N to repeat"),
    ("a#-5", "bad percentage '-5'"),
    ("a*2#50", "one modifier"),
    ("a b", "is not 'name'"),
    ("a+zzz", "unknown dataset 'zzz'; known: a, bb"),
    ("a+b", "unknown dataset 'b'; did you mean 'bb'"),
])
def test_parse_mixture_errors(expr, message):
    with pytest.raises(MixtureError, match=message):
        parse_mixture(expr, known=["a", "bb"])


def test_resolve_counts_are_exact():
    sizes = {"a": 10, "b": 7, "c": 3}
    names, ds, rows = resolve_mixture(parse_mixture("a*2+b#50+c"), sizes, seed=0)
    assert names == ["a", "b", "c"]
    assert np.bincount(ds).tolist() == [20, 3, 3]  # 2*10, floor(7*0.5), 3
    assert rows[:20].tolist() == list(range(10)) * 2
    b_rows = rows[ds == 1]
    assert len(set(b_rows.tolist())) == 3 and b_rows.tolist() == sorted(b_rows.tolist())
    for p, n, expect in [(100, 7, 7), (12.5, 16, 2), (33, 10, 3), (1, 99, 0)]:
        assert Term("x", percent=p).count(n) == expect
        assert len(resolve_mixture([Term("x", percent=p)], {"x": n})[2]) == expect


def test_subsets_deterministic_by_seed_and_independent_of_other_terms():
    sizes = {"a": 1000, "b": 50}
    pick = lambda expr, seed: (lambda r: r[2][r[1] == r[0].index("a")])(  # noqa: E731
        resolve_mixture(parse_mixture(expr), sizes, seed))
    first = pick("a#30", 1)
    assert len(first) == 300
    assert np.array_equal(first, pick("a#30", 1))
    assert np.array_equal(first, pick("b*3+a#30", 1))  # adding terms does not move a's subset
    assert not np.array_equal(first, pick("a#30", 2))


def test_registry_weights_are_default_modifiers(tmp_path):
    reg_path = tmp_path / "reg.toml"
    reg_path.write_text("""
# comments are allowed
[datasets.a]
manifest = "a.jsonl"
weight = 2

[datasets.half]
manifest = "sub/h.jsonl"
audio_root = "wavs"
weight = 0.5

[datasets."odd.name"]
manifest = "o.jsonl"
""")
    text_manifest(tmp_path / "a.jsonl", "a", 4)
    (tmp_path / "sub").mkdir()
    text_manifest(tmp_path / "sub" / "h.jsonl", "h", 10)
    text_manifest(tmp_path / "o.jsonl", "o", 3)
    reg = Registry.load(reg_path)
    assert reg["half"].audio_root == tmp_path / "wavs" and reg["half"].weight == 0.5
    assert build_mixture("a+half+odd.name", reg_path, seed=0).counts() == {"a": 8, "half": 5, "odd.name": 3}
    # An explicit modifier replaces the weight.
    assert build_mixture("a*1+half#100", reg).counts() == {"a": 4, "half": 10}
    m = build_mixture("a+a#50", reg)  # same dataset twice: read once, entries concatenated
    assert m.counts() == {"a": 10} and len(m.records) == 1
    assert m.record(0).id == "a0" and m[9] in {("a", r) for r in range(4)}
    # Round trip through save (absolute paths).
    again = Registry.load(reg.save(tmp_path / "saved.toml"))
    assert again.datasets == reg.datasets


def test_registry_errors(tmp_path):
    def load(text):
        p = tmp_path / "r.toml"
        p.write_text(text)
        return Registry.load(p)

    with pytest.raises(MixtureError, match="unknown key.*audio-root"):
        load('[datasets.a]\nmanifest = "a.json"\naudio-root = "x"\n')
    with pytest.raises(MixtureError, match="'manifest' .a path. is required"):
        load('[datasets.a]\nweight = 1\n')
    with pytest.raises(MixtureError, match="'weight' must be a positive number"):
        load('[datasets.a]\nmanifest = "a.json"\nweight = 0\n')
    with pytest.raises(MixtureError, match="invalid TOML"):
        load('[datasets.a\n')
    with pytest.raises(MixtureError, match="unknown top-level"):
        load('[dataset.a]\nmanifest = "a.json"\n')
    reg = Registry({"a": DatasetSpec("a", tmp_path / "missing.jsonl")})
    with pytest.raises(MixtureError, match="manifest .*missing.jsonl not found"):
        build_mixture("a", reg)
    with pytest.raises(MixtureError, match="unknown dataset 'b'"):
        build_mixture("a+b", reg)


def test_build_mixture_drops_unreadable_rows_with_warning(tmp_path):
    p = text_manifest(tmp_path / "a.jsonl", "a", 3)
    p.write_text(p.read_text() + "{broken\n")
    reg = Registry({"a": DatasetSpec("a", p)})
    with pytest.warns(UserWarning, match="dropped 1 unreadable manifest row"):
        m = build_mixture("a", reg)
    assert len(m) == 3 and [(q.row, q.kind) for q in m.problems] == [(4, "bad_json")]


# ----------------------------------------------------------------------------- sampler


def take(it, k):
    return list(itertools.islice(it, k))


@pytest.mark.parametrize("k", [0, 1, 7, 12, 13, 20, 30])
def test_sampler_resume_is_exact(k):
    n, epochs = 12, 3
    full = list(MixtureSampler(n, seed=5).stream(epochs))
    assert len(full) == n * epochs
    s = MixtureSampler(n, seed=5)
    stream = s.stream()
    head = take(stream, k)
    state = json.loads(json.dumps(s.state_dict()))  # survives serialisation
    resumed = MixtureSampler(n, seed=5)
    resumed.load_state_dict(state)
    rest = take(resumed.stream(), n * epochs - k)
    assert head + rest == full


def test_sampler_epoch_by_epoch_iteration_and_resume_across_boundary():
    n = 10
    s = MixtureSampler(n, seed=3)
    e0, e1, e2 = list(s), list(s), list(s)
    assert sorted(e0) == sorted(e1) == list(range(n)) and e0 != e1  # reshuffled per epoch
    assert e0 == MixtureSampler(n, seed=3).indices(0).tolist()
    # Consume all of epoch 0 and 3 items of epoch 1, then resume: the rest of epoch 1, then epoch 2.
    s = MixtureSampler(n, seed=3)
    assert list(s) == e0
    it = iter(s)
    assert take(it, 3) == e1[:3]
    state = s.state_dict()
    assert (state["epoch"], state["position"]) == (1, 3)
    r = MixtureSampler(n, seed=3)
    r.load_state_dict(state)
    assert list(r) == e1[3:] and list(r) == e2
    # A finished epoch saved without pulling StopIteration resumes at the next epoch's start.
    s = MixtureSampler(n, seed=3)
    take(iter(s), n)
    assert (s.state_dict()["epoch"], s.state_dict()["position"]) == (1, 0)
    unshuffled = MixtureSampler(n, shuffle=False)
    assert list(unshuffled) == list(range(n)) == list(unshuffled)


@pytest.mark.parametrize("world_size", [2, 3])
def test_sampler_data_parallel_sharding(world_size):
    n = 12  # divisible by both: every index exactly once per epoch across ranks
    for epoch in range(2):
        shards = []
        for rank in range(world_size):
            s = MixtureSampler(n, seed=9, rank=rank, world_size=world_size)
            s.set_epoch(epoch)
            shards.append(list(s))
        assert all(len(sh) == n // world_size for sh in shards)
        assert sorted(itertools.chain(*shards)) == list(range(n))
        # Step t of all ranks = a contiguous slice of the global order.
        order = MixtureSampler(n, seed=9).epoch_order(epoch).tolist()
        assert [shards[r][1] for r in range(world_size)] == order[world_size:2 * world_size]


@pytest.mark.parametrize("world_size", [2, 3])
def test_sampler_padding_and_drop_last(world_size):
    n = 10
    order = MixtureSampler(n, seed=1).epoch_order(0).tolist()
    padded = [list(MixtureSampler(n, seed=1, rank=r, world_size=world_size)) for r in range(world_size)]
    per_rank = -(-n // world_size)
    assert all(len(p) == per_rank for p in padded)
    flat = sorted(itertools.chain(*padded))
    pad = per_rank * world_size - n
    assert set(flat) == set(range(n)) and len(flat) == n + pad
    extra = [i for i in range(n) if flat.count(i) > 1]
    assert sorted(extra) == sorted(order[:pad])  # padding repeats the head of the epoch's order
    dropped = [list(MixtureSampler(n, seed=1, rank=r, world_size=world_size, drop_last=True))
               for r in range(world_size)]
    kept = list(itertools.chain(*dropped))
    assert len(kept) == len(set(kept)) == n - n % world_size
    assert set(range(n)) - set(kept) == set(order[n - n % world_size:])


def test_sampler_elastic_resume_and_mismatch_errors():
    n = 12
    two = [MixtureSampler(n, seed=4, rank=r, world_size=2) for r in range(2)]
    for s in two:
        take(iter(s), 3)  # 6 indices consumed globally
    one = MixtureSampler(n, seed=4)
    one.load_state_dict(two[0].state_dict())
    assert list(one) == MixtureSampler(n, seed=4).epoch_order(0).tolist()[6:]
    with pytest.raises(ValueError, match="saved seed=4"):
        MixtureSampler(n, seed=5).load_state_dict(two[0].state_dict())
    with pytest.raises(ValueError, match="saved num_items=12"):
        MixtureSampler(n + 1, seed=4).load_state_dict(two[0].state_dict())
    with pytest.raises(ValueError, match="world_size 4"):
        MixtureSampler(n, seed=4, rank=0, world_size=4).load_state_dict(two[0].state_dict())
    with pytest.raises(ValueError, match="rank 2"):
        MixtureSampler(n, rank=2, world_size=2)
    assert list(MixtureSampler(0)) == [] and list(MixtureSampler(0).stream()) == []
    assert len(list(MixtureSampler(2, rank=2, world_size=3))) == 1  # n < world_size still pads


# ----------------------------------------------------------------------------- loader


@pytest.fixture
def mixed_manifest(tmp_path):
    """12 rows: 9 good (one with two audios), 1 missing, 1 corrupt, 1 placeholder mismatch."""
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(3):
        write_wav(audio / f"g{i}.wav", 0.2 + 0.1 * i, seed=i)
    (audio / "bad.flac").write_bytes(np.random.default_rng(7).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    rows = []
    for i in range(12):
        rows.append({"id": f"r{i}", "sound": f"audio/g{i % 3}.wav", "duration": 0.2 + 0.1 * (i % 3),
                     "conversations": conv(a=f"answer {i}")})
    rows[3] = dict(rows[3], sound="audio/gone.wav")
    rows[6] = dict(rows[6], sound="audio/bad.flac")
    rows[8] = dict(rows[8], conversations=conv("<sound> <sound>", "two?"))
    rows[10] = {"id": "r10", "sound": ["audio/g0.wav", "audio/g2.wav"], "duration": [0.2, 0.4],
                "conversations": conv("Is <sound-2> longer than <sound-1>?", "yes")}
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dataset_items_and_errors(mixed_manifest):
    ds = ManifestDataset(mixed_manifest)
    assert len(ds) == 12
    item = ds[0]
    assert item["id"] == "r0" and item["row"] == 1 and item["dataset"] == "data"
    assert item["waves"][0].dtype == np.float32 and len(item["waves"][0]) == int(0.2 * SR)
    multi = ds[10]  # <sound-2> comes first, so its audio is waves[0]
    assert multi["conversations"][0]["value"] == "Is <sound> longer than <sound>?"
    assert [len(w) for w in multi["waves"]] == [int(0.4 * SR), int(0.2 * SR)]
    assert [p.name for p in multi["sounds"]] == ["g2.wav", "g0.wav"]
    raw = ManifestDataset(mixed_manifest, bind_placeholders=False)[10]
    assert [len(w) for w in raw["waves"]] == [int(0.2 * SR), int(0.4 * SR)]
    for i, reason in [(3, "missing_audio"), (6, "corrupt_audio"), (8, "placeholder_mismatch")]:
        with pytest.raises(SampleError) as e:
            ds[i]
        assert e.value.reason == reason and e.value.row == i + 1 and e.value.id == f"r{i}"


def test_audio_cache_serves_repeats_from_memory_and_notices_rewrites(mixed_manifest):
    import os

    from afnext.data.audio_cache import AudioCache

    cache = AudioCache(2**20)
    plain, cached = ManifestDataset(mixed_manifest), ManifestDataset(mixed_manifest, audio_cache=cache)
    for _ in range(2):  # epochs: the second reads every good file from memory
        for i in (0, 1, 2, 10):
            for a, b in zip(plain[i]["waves"], cached[i]["waves"]):
                np.testing.assert_array_equal(a, b)
    assert (cache.misses, cache.hits, len(cache)) == (3, 7, 3)
    wave = cached[0]["waves"][0]
    wave[:] = 0  # callers get a copy: the cached wave is untouched
    assert np.abs(cached[0]["waves"][0]).max() > 0
    for _ in range(2):  # a corrupt file is never cached: it fails every time, as without the cache
        with pytest.raises(SampleError) as e:
            cached[6]
        assert e.value.reason == "corrupt_audio"
    g0 = mixed_manifest.parent / "audio" / "g0.wav"
    write_wav(g0, 0.5, seed=9)  # rewritten in place: new size and mtime, decoded afresh
    os.utime(g0, ns=(1, 1))
    assert len(cached[0]["waves"][0]) == int(0.5 * SR)
    small = AudioCache(int(0.4 * SR) * 4)  # bytes of the 0.4-s wave (g2)
    ds = ManifestDataset(mixed_manifest, audio_cache=small)
    ds[0]  # g0, now 0.5 s, is larger than the whole cache: decoded, never kept
    assert len(small) == 0 and small.bytes == 0
    ds[1], ds[2]  # g1 then g2: g2 needs the room, and g1, the least recently used, goes
    assert len(small) == 1 and small.bytes == int(0.4 * SR) * 4
    misses = small.misses
    ds[2], ds[1]
    assert small.misses == misses + 1  # g2 from memory, g1 decoded again
    with pytest.raises(ValueError, match="audio cache size must be >= 0 bytes, got -1"):
        AudioCache(-1)


def test_skipping_loader_skips_and_summarises(mixed_manifest):
    ds = ManifestDataset(mixed_manifest)
    loader = SkippingLoader(ds, MixtureSampler(ds, seed=0, shuffle=False), keep_length=False)
    ids = [x["id"] for x in loader]
    assert ids == [f"r{i}" for i in range(12) if i not in (3, 6, 8)]
    s = loader.summary
    assert s.summary() == "skipped 3 of 12 rows: 1 missing audio, 1 corrupt audio, 1 placeholder mismatch"
    assert [(e.row, e.id, e.reason) for e in s.events] == [
        (4, "r3", "missing_audio"), (7, "r6", "corrupt_audio"), (9, "r8", "placeholder_mismatch")]
    assert all(e.manifest == mixed_manifest for e in s.events)
    assert s.counts == {"missing_audio": 1, "corrupt_audio": 1, "placeholder_mismatch": 1}


def test_skipping_loader_keeps_epoch_length_and_is_deterministic(mixed_manifest):
    ds = ManifestDataset(mixed_manifest)

    def run(threads, epochs=2):
        loader = SkippingLoader(ds, MixtureSampler(ds, seed=11), num_threads=threads)
        return [x["id"] for x in loader.stream(epochs)], loader

    ids, loader = run(0)
    assert len(ids) == 2 * len(ds)  # every epoch still yields len(sampler) items
    assert not {"r3", "r6", "r8"} & set(ids)
    assert loader.summary.summary().startswith("skipped 6 of 30 rows")  # 3 per epoch; 24 yields + 6 skips
    assert run(0)[0] == ids and run(3)[0] == ids  # same seed, same stream; threads change nothing
    # The shortfall is made up from the start of the same epoch's order.
    order = [f"r{i}" for i in MixtureSampler(12, seed=11).indices(0)]
    good_first = [r for r in order if r not in {"r3", "r6", "r8"}]
    assert ids[:12] == good_first + good_first[:3]


@pytest.mark.parametrize("k", [0, 4, 10, 11, 12, 13, 20])
@pytest.mark.parametrize("threads", [0, 2])
def test_skipping_loader_resume_is_exact(mixed_manifest, k, threads):
    ds = ManifestDataset(mixed_manifest)
    full = [x["id"] for x in SkippingLoader(ds, MixtureSampler(ds, seed=2)).stream(2)]
    loader = SkippingLoader(ds, MixtureSampler(ds, seed=2), num_threads=threads)
    head = [x["id"] for x in take(loader.stream(), k)]
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = SkippingLoader(ds, MixtureSampler(ds, seed=2), num_threads=threads)
    resumed.load_state_dict(state)
    rest = [x["id"] for x in take(resumed.stream(), 24 - k)]
    assert head + rest == full
    assert resumed.summary.attempted == 30  # the summary carries over


def test_skipping_loader_data_parallel_ranks_stay_in_step(mixed_manifest):
    ds = ManifestDataset(mixed_manifest)
    per_rank = [[x["id"] for x in SkippingLoader(ds, MixtureSampler(ds, seed=0, rank=r, world_size=3))]
                for r in range(3)]
    assert [len(p) for p in per_rank] == [4, 4, 4]
    shards = [{f"r{i}" for i in MixtureSampler(ds, seed=0, rank=r, world_size=3)} for r in range(3)]
    assert all(set(p) <= shard for p, shard in zip(per_rank, shards))  # fill stays within the rank's shard


def test_skipping_loader_over_a_mixture_and_all_bad_shard(tmp_path, mixed_manifest):
    reg = Registry({"m": DatasetSpec("m", mixed_manifest)})
    mix = build_mixture("m*2", reg, seed=0)
    loader = SkippingLoader(ManifestDataset(mix), MixtureSampler(mix, seed=0, shuffle=False), keep_length=False)
    assert len(list(loader)) == 18
    assert loader.summary.summary() == (
        "skipped 6 of 24 rows: 2 missing audio, 2 corrupt audio, 2 placeholder mismatch")
    bad = [Record(id=f"x{i}", sounds=[tmp_path / "nope.wav"], durations=None,
                  conversations=conv(), row=i + 1) for i in range(3)]
    with pytest.raises(RuntimeError, match="none of this rank's 3 items can be loaded"):
        list(SkippingLoader(ManifestDataset(bad)))
    mix = Mixture.from_records({"a": bad[:1], "b": bad[1:]}, "a*2+b")
    assert mix.counts() == {"a": 2, "b": 2}
