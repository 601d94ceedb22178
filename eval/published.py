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


def published_table() -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {domain: {"hr@3": ..., "ndcg@10": ...}}}`` for the two Amazon 2018 domains."""
    return {model: {d: dict(zip(COLUMNS, values)) for d, values in zip(DOMAINS, per_domain)}
            for model, per_domain in _TABLE.items()}
