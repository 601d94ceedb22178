"""Published results on the same Amazon 2018 test rows (MiniOneRec README; shared/reference/SEEDS_DIGEST.md, last
table). Those models were trained on the original ~36k/38k training rows; ours train on the leak-free
reconstruction (+ validation rows), so the rows are labelled "published, different training data"."""

from __future__ import annotations

SOURCE = "MiniOneRec README (Amazon 2018, same test rows), via shared/reference/SEEDS_DIGEST.md"
LABEL = "published, different training data"
COLUMNS = ("hr@3", "ndcg@3", "hr@5", "ndcg@5", "hr@10", "ndcg@10")
DOMAINS = ("Industrial_and_Scientific", "Office_Products")

# model: (Industrial values, Office values), each in COLUMNS order.
_TABLE = {
    "GRU4Rec": ((.0638, .0542, .0774, .0598, .0999, .0669), (.0629, .0528, .0789, .0595, .1019, .0669)),
    "Caser": ((.0618, .0514, .0717, .0555, .0942, .0628), (.0748, .0615, .0865, .0664, .1093, .0737)),
    "SASRec": ((.0790, .0700, .0909, .0748, .1088, .0806), (.0861, .0769, .0949, .0805, .1120, .0858)),
    "HSTU": ((.0927, .0885, .1037, .0918, .1163, .0958), (.1134, .1031, .1252, .1079, .1400, .1126)),
    "TIGER": ((.0852, .0742, .1010, .0807, .1321, .0908), (.0986, .0852, .1163, .0960, .1408, .1002)),
    "LC-Rec": ((.0915, .0805, .1057, .0862, .1332, .0952), (.0921, .0807, .1048, .0859, .1237, .0920)),
    "BIGRec": ((.0931, .0841, .1092, .0907, .1370, .0997), (.1069, .0961, .1204, .1017, .1434, .1091)),
    "D3": ((.1024, .0991, .1213, .0989, .1500, .1082), (.1204, .1055, .1406, .1139, .1634, .1213)),
    "S-DPO": ((.1032, .0906, .1238, .0991, .1524, .1082), (.1169, .1033, .1356, .1110, .1587, .1255)),
    "MiniOneRec": ((.1143, .1011, .1321, .1084, .1586, .1167), (.1217, .1088, .1420, .1172, .1634, .1242)),
}


# The published rows are for these exact test files (sha256 of the files MiniOneRec ships, as data/amazon18/ holds
# them): another dataset, or other rows under the same domain name, gets no published rows.
TEST_FILE_HASHES = {
    "Industrial_and_Scientific": "973dd1db4fd549f3f2b40a0f039dbae157ebb92c716197cc246401e4e82c3a46",
    "Office_Products": "c1967034e197a7837a8962f2556efaabc12eb5bb84e1fdc79cd0accbce71add5",
}


def source_parts(dataset_meta: dict) -> list[dict]:
    """The importer records of a dataset's meta (one per domain for a merged dataset)."""
    source = dataset_meta.get("source") or {}
    return list(source.get("parts") or [source])


def published_domains(dataset_meta: dict) -> list[str]:
    """Domains of this dataset whose test rows are the published table's (same importer, same test file)."""
    out = []
    for part in source_parts(dataset_meta):
        name, files = part.get("name"), part.get("files") or {}
        if part.get("format") == "minionerec" and name in TEST_FILE_HASHES and \
                TEST_FILE_HASHES[name] in files.values():
            out.append(name)
    return out


def dataset_notes(dataset_meta: dict) -> list[str]:
    """What the importer says about how the train split was made (e.g. rebuilt windows), one line per domain."""
    notes = []
    for part in source_parts(dataset_meta):
        if part.get("train_split"):
            notes.append(f"{part.get('name', 'dataset')}: train split {part['train_split']}"
                         + (f" (history up to {part['max_history_train']} items)" if part.get("max_history_train")
                            else ""))
    return notes


def published_table(dataset_meta: dict | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {domain: {"hr@3": ..., "ndcg@10": ...}}}`` for the domains of ``dataset_meta`` that the table
    applies to (see :func:`published_domains`; ``None``: both Amazon 2018 domains)."""
    domains = DOMAINS if dataset_meta is None else tuple(published_domains(dataset_meta))
    table = {model: {d: dict(zip(COLUMNS, values)) for d, values in zip(DOMAINS, per_domain) if d in domains}
             for model, per_domain in _TABLE.items()}
    return {m: v for m, v in table.items() if v}
