"""A fixed English paragraph for live-text timings (written for this benchmark)."""

TEXT = " ".join([
    "The river town grew up around a stone bridge built in the twelfth century, when merchants carried wool, salt",
    "and iron between the coast and the hill country. By 1850 the railway had arrived, and with it a brewery, two",
    "paper mills and a school of music that still gives concerts every Sunday afternoon. The old market square is",
    "lined with timber houses; the largest of them, once a customs office, now holds a small museum of maps, clocks",
    "and scientific instruments. Visitors can climb the bell tower for a view of the valley, where vineyards give",
    "way to beech forest and, higher up, to pasture. In winter the lakes freeze and the town holds a skating race",
    "along twelve kilometres of canals. Local cooks are proud of a fish soup seasoned with saffron and fennel, of",
    "smoked sausages, and of a plum cake that is baked only in September. The population, about 14,000 people in",
    "the last census, has grown slowly since the 1990s as families moved out of the capital in search of cheaper",
    "housing, cleaner air and quieter streets. A new bridge for cyclists was opened in 2019, and the council plans",
    "to restore the ruined abbey on the northern bank, whose library was famous throughout Europe until a fire in",
    "1632 destroyed most of its manuscripts. Some of the surviving books are kept today in the university library,",
    "where scholars study their marginal notes, which record floods, harvests, prices and the arrival of strangers.",
])
