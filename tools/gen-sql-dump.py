#!/usr/bin/env python3
"""Deterministic generator of a realistic PostgreSQL plain-format dump (pg_dump -Fp).

Night 0 is the base dump; night k is night k-1 after one day of typical activity:

  orders     (table A)  2% new rows appended at the end of its COPY block
  events     (table B)  a contiguous run of ~1% of its rows deleted from the middle
  customers  (table C)  a block of ~1% new rows inserted in the middle of its COPY block
  products, order_notes unchanged

plus the matching `SELECT pg_catalog.setval(...)` lines near the end (as pg_dump prints
them). Everything else is byte-identical from night to night.

Each row is a pure function of (seed, table, row id): rows are generated in blocks of
1000 ids from a Random seeded with (seed, table, block), so a night is described only by
the list of id ranges of each table, and the whole dump streams out in big writes
without ever being held in memory.

Usage:
  tools/gen-sql-dump.py --size-mb 200 --night 0 --seed 42 --out night0.sql
  tools/gen-sql-dump.py --size-mb 200 --night 1 --seed 42 | dbbackup dedup backup - ...
"""

import argparse
import random
import sys
import time

BLOCK = 1000  # row ids per generator block

# ---------------------------------------------------------------------------
# Vocabularies (fixed, so the output depends on --seed only)

_WORDS = """
the of and to in is was for on are with as by at be this from or have an they which one you had
not but what all were when we there can been has more if will no so up out them would about into
than its only other new some time could these two may first then do any like my now over such our
man me even most made after also did many before must through back years where much your way
well down should because each just those people how too little state good very make world still
own see men work long get here between both life being under never day same another know while
last might us great old year off come since against go came right used take three account order
invoice payment shipment delivery customer product warehouse refund discount coupon voucher cart
checkout address street avenue road lane city region postal code country phone mobile email
status pending processing shipped delivered cancelled returned failed completed active inactive
premium standard basic trial subscription renewal monthly yearly weekly daily quarterly annual
report summary detail note comment review rating feedback support ticket request issue problem
solution update change version release build deploy server client browser device tablet desktop
session login logout signup register password reset verify confirm notification message alert
reminder schedule calendar event meeting call chat video audio image photo file document upload
download export import backup restore archive database table index query cache queue worker job
task batch stream pipeline service gateway proxy balancer cluster node region zone instance
container volume snapshot metric counter gauge histogram latency throughput error warning info
debug trace span context request response header body payload token secret key value config
setting option preference profile account user admin manager owner member guest visitor partner
vendor supplier carrier courier package parcel box pallet container freight express priority
economy overnight international domestic local remote online offline mobile retail wholesale
price cost margin profit revenue expense budget forecast target goal quota balance credit debit
tax fee charge rate currency euro dollar pound franc yen amount total subtotal quantity unit
blue red green yellow black white silver golden purple orange small medium large extra huge
cotton leather wooden steel plastic glass ceramic paper organic natural classic modern vintage
fresh frozen dried roasted sweet sour spicy salty bitter smooth rough soft hard light heavy
quick slow early late happy sad friendly helpful careful simple complex easy difficult clear
please thanks sorry hello dear regards best kind cheers again soon later tomorrow yesterday today
morning evening night noon week month weekend holiday season spring summer autumn winter
""".split()

_FIRST = """James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara
Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy Matthew Betty
Anthony Margaret Mark Sandra Donald Ashley Steven Kimberly Paul Emily Andrew Donna Joshua Michelle
Kenneth Carol Kevin Amanda Brian Dorothy George Melissa Timothy Deborah Ronald Stephanie Edward
Rebecca Jason Sharon Jeffrey Laura Ryan Cynthia Jacob Kathleen Gary Amy Nicholas Angela Eric Shirley
Jonathan Anna Stephen Brenda Larry Pamela Justin Emma Scott Nicole Brandon Helen Benjamin Samantha
Samuel Katherine Gregory Christine Alexander Debra Frank Rachel Patrick Carolyn Raymond Janet Jack
Catherine Dennis Maria Jerry Heather Tyler Diane Aaron Ruth Jose Julie Adam Olivia Nathan Joyce Henry
Virginia Douglas Victoria Zachary Kelly Peter Lauren Kyle Christina Ethan Joan Walter Evelyn Noah
Judith Jeremy Megan Christian Andrea Keith Cheryl Roger Hannah Terry Jacqueline Gerald Martha Harold
Gloria Sean Teresa Austin Ann Carl Sara Arthur Madison Lawrence Frances Dylan Kathryn Jesse Janice
Jordan Jean Bryan Abigail Billy Alice Joe Judy Bruce Sophia Gabriel Grace Logan Denise Albert Amber
Willie Doris Alan Marilyn Juan Danielle Wayne Beverly Elijah Isabella Randy Theresa Roy Diana Vincent
Natalie Ralph Brittany Eugene Charlotte Russell Marie Bobby Kayla Mason Alexis Philip Lori Louis
Sven Ingrid Lars Astrid Pierre Camille Hans Greta Paolo Giulia Jorge Lucia Kenji Yuki Wei Mei Ivan
Olga Ahmed Fatima Raj Priya Kwame Ama Mateus Beatriz Tomasz Zofia Nils Freya Lukas Lena""".split()

_LAST = """Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez
Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez
Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green
Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz
Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan
Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood
James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers Long Ross Foster
Jimenez Powell Jenkins Perry Russell Sullivan Bell Coleman Butler Henderson Barnes Gonzales Fisher
Vasquez Simmons Romero Jordan Patterson Alexander Hamilton Graham Reynolds Griffin Wallace Moreno
West Cole Hayes Bryant Herrera Gibson Ellis Tran Medina Aguilar Stevens Murray Ford Castro Marshall
Owens Harrison Fernandez McDonald Woods Washington Kennedy Wells Vargas Henry Chen Freeman Webb
Tucker Guzman Burns Crawford Olson Simpson Porter Hunter Gordon Mendez Silva Shaw Snyder Mason
Dixon Munoz Hunt Hicks Holmes Palmer Wagner Black Robertson Boyd Rose Stone Salazar Fox Warren
Mills Meyer Rice Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver Ryan Gardner Payne
Mueller Schneider Fischer Weber Becker Hoffmann Dubois Laurent Lefebvre Rossi Russo Bianchi
Kowalski Nowak Novak Horvat Jansen Visser Andersson Johansson Nielsen Hansen Tanaka Suzuki Wang
Li Zhang Liu Singh Kumar Sharma Okafor Mensah Santos Oliveira Costa Ivanov Petrov""".split()

_DOMAINS = """gmail.com yahoo.com outlook.com hotmail.com icloud.com proton.me gmx.de web.de orange.fr
free.fr libero.it mail.ru yandex.ru qq.com example.com example.org fastmail.com aol.com
zoho.com t-online.de""".split()

_COUNTRIES = ["US", "US", "US", "GB", "DE", "DE", "FR", "IT", "ES", "NL", "SE", "PL", "CA", "AU",
              "JP", "BR", "IN", "MX", "CH", "AT", "BE", "IE", "NO", "DK", "FI", "PT", "CZ", "NZ"]

_CITIES = """Springfield Riverside Franklin Greenville Bristol Clinton Fairview Salem Madison
Georgetown Arlington Ashland Burlington Manchester Oxford Cambridge Berlin Hamburg Munich Cologne
Paris Lyon Marseille Milan Rome Turin Madrid Barcelona Valencia Amsterdam Rotterdam Utrecht
Stockholm Gothenburg Warsaw Krakow Toronto Vancouver Montreal Sydney Melbourne Brisbane Tokyo
Osaka Kyoto Lisbon Porto Dublin Cork Oslo Bergen Copenhagen Aarhus Helsinki Vienna Zurich Geneva
Brussels Antwerp Prague Brno Auckland Wellington Austin Denver Portland Seattle Boston Chicago""".split()

_STREETS = """Main Oak Pine Maple Cedar Elm Washington Lake Hill Park Church High Mill River
Station Bridge Market King Queen Victoria Garden Forest Meadow Sunset Highland Spring Valley""".split()
_STREET_KINDS = ["St", "Ave", "Rd", "Lane", "Blvd", "Way", "Drive", "Court", "Place", "Strasse"]

_ORDER_STATUS = ["pending", "paid", "paid", "shipped", "shipped", "shipped", "delivered", "delivered",
                 "delivered", "delivered", "cancelled", "refunded"]
_CURRENCIES = ["USD", "USD", "USD", "EUR", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF", "SEK"]
_EVENT_TYPES = ["page_view", "page_view", "page_view", "page_view", "click", "click", "search",
                "add_to_cart", "remove_from_cart", "checkout_start", "checkout_complete", "login",
                "logout", "signup", "password_reset", "api_call", "api_call", "error", "video_play"]
_PATHS = ["/", "/products", "/products/{n}", "/cart", "/checkout", "/account", "/account/orders",
          "/search", "/help", "/blog/{n}", "/category/{n}", "/api/v2/items/{n}", "/login", "/signup"]
_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{v2} Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{v2} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel {v2}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Mobile Safari/537.36",
    "okhttp/4.{v2}.0", "python-requests/2.3{v2}.0", "curl/8.{v2}.0",
]
_CATEGORIES = ["electronics", "books", "garden", "kitchen", "toys", "sports", "clothing", "beauty",
               "automotive", "office", "music", "grocery", "pets", "tools", "health"]


def _zipf_cum_weights(n, s=1.05):
    cum, total = [], 0.0
    for r in range(1, n + 1):
        total += 1.0 / (r ** s)
        cum.append(total)
    return cum


class Vocab:
    def __init__(self):
        rng = random.Random("dbbackup-gen-sql-dump-vocab-v1")
        words = list(dict.fromkeys(_WORDS))
        # Add synthetic words so that the vocabulary is large enough for prose that
        # zstd cannot squeeze 100x (real text has tens of thousands of word forms).
        syll = ["ka", "lo", "mi", "ter", "son", "ver", "ian", "ex", "pro", "con", "ment", "tion",
                "ar", "el", "is", "ur", "an", "dor", "ble", "ing", "ed", "ly", "sta", "gra", "phi"]
        extra = set()
        while len(extra) < 6000:
            w = "".join(rng.choice(syll) for _ in range(rng.randint(2, 4)))
            if w not in words:
                extra.add(w)
        extra = sorted(extra)
        rng.shuffle(extra)
        rng.shuffle(words)
        # real words are the frequent ones, the synthetic ones the long tail
        self.words = words + extra
        self.cum = _zipf_cum_weights(len(self.words))
        # day strings: 2019-01-01 .. 2030-12-31
        import datetime
        d0 = datetime.date(2019, 1, 1)
        self.epoch_day0 = (d0 - datetime.date(1970, 1, 1)).days
        self.days = [(d0 + datetime.timedelta(days=i)).isoformat() for i in range(366 * 12)]


V = None


def ts(secs, micro=None):
    """Timestamp with time zone as pg_dump prints it (UTC session)."""
    day, rem = divmod(int(secs), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    d = V.days[day - V.epoch_day0]
    if micro is None:
        return f"{d} {h:02d}:{m:02d}:{s:02d}+00"
    return f"{d} {h:02d}:{m:02d}:{s:02d}.{micro:06d}+00"


def text(rng, lo, hi):
    n = rng.randint(lo, hi)
    ws = rng.choices(V.words, cum_weights=V.cum, k=n)
    # sentences: capitalise the first word, a number now and then, a full stop
    out = []
    i = 0
    while i < n:
        k = rng.randint(5, 16)
        sent = ws[i:i + k]
        i += k
        if rng.random() < 0.3:
            sent.insert(rng.randrange(len(sent) + 1), str(rng.randint(1, 99999)))
        sent[0] = sent[0].capitalize()
        out.append(" ".join(sent) + ".")
    sep = "\\n" if rng.random() < 0.2 else " "
    return sep.join(out)


# ---------------------------------------------------------------------------
# Tables. Each has: name, columns, DDL body, a row generator for a block of ids.

BASE_T = 1577836800  # 2020-01-01


def gen_customers(rng, first_id, n):
    rows = []
    for i in range(first_id, first_id + n):
        fn = rng.choice(_FIRST)
        ln = rng.choice(_LAST)
        sep = rng.choice((".", "_", "", "."))
        num = str(rng.randint(1, 9999)) if rng.random() < 0.5 else ""
        email = f"{fn.lower()}{sep}{ln.lower()}{num}@{rng.choice(_DOMAINS)}"
        phone = f"+{rng.randint(1, 99)} {rng.randint(100, 999)} {rng.randint(100, 9999999):07d}" if rng.random() < 0.8 else "\\N"
        created = BASE_T + i * 300 + rng.randint(0, 299)
        created_s = ts(created, rng.randrange(1000000))
        updated_s = ts(created + rng.randint(1, 400 * 86400), rng.randrange(1000000)) if rng.random() < 0.6 else created_s
        street = f"{rng.randint(1, 2999)} {rng.choice(_STREETS)} {rng.choice(_STREET_KINDS)}"
        notes = text(rng, 8, 60) if rng.random() < 0.35 else "\\N"
        rows.append(
            f"{i}\t{fn}\t{ln}\t{email}\t{phone}\t{street}\t{rng.choice(_CITIES)}\t"
            f"{rng.randint(1000, 99999):05d}\t{rng.choice(_COUNTRIES)}\t"
            f"{'t' if rng.random() < 0.9 else 'f'}\t{rng.randint(0, 5000000) / 100:.2f}\t"
            f"{created_s}\t{updated_s}\t{notes}\n")
    return rows


def gen_orders(rng, first_id, n):
    rows = []
    ncust = max(1000, first_id // 3)
    for i in range(first_id, first_id + n):
        status = rng.choice(_ORDER_STATUS)
        created = BASE_T + i * 97 + rng.randint(0, 96)
        shipped = ts(created + rng.randint(3600, 5 * 86400)) if status in ("shipped", "delivered") else "\\N"
        items = rng.randint(1, 12)
        total = rng.randint(199, 250000 * items) / 100
        tax = round(total * rng.choice((0.0, 0.05, 0.07, 0.19, 0.2, 0.21)), 2)
        ship = rng.choice((0, 0, 499, 599, 999, 1499)) / 100
        addr = (f"{rng.randint(1, 2999)} {rng.choice(_STREETS)} {rng.choice(_STREET_KINDS)}, "
                f"{rng.randint(1000, 99999):05d} {rng.choice(_CITIES)}, {rng.choice(_COUNTRIES)}")
        note = text(rng, 4, 30) if rng.random() < 0.25 else "\\N"
        coupon = f"{rng.choice(_WORDS).upper()}{rng.randint(5, 50)}" if rng.random() < 0.1 else "\\N"
        rows.append(
            f"{i}\t{rng.randint(1, ncust)}\t{status}\t{rng.choice(_CURRENCIES)}\t{items}\t"
            f"{total:.2f}\t{tax:.2f}\t{ship:.2f}\t{coupon}\t{addr}\t{ts(created, rng.randrange(1000000))}\t"
            f"{shipped}\t{note}\n")
    return rows


def gen_events(rng, first_id, n):
    rows = []
    for i in range(first_id, first_id + n):
        et = rng.choice(_EVENT_TYPES)
        t = BASE_T + 20 * 86400 + i * 13 + rng.randint(0, 12)
        uid = str(rng.randint(1, 400000)) if rng.random() < 0.7 else "\\N"
        sid = "%032x" % rng.getrandbits(128)
        sid = f"{sid[:8]}-{sid[8:12]}-4{sid[13:16]}-a{sid[17:20]}-{sid[20:]}"
        ip = f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        ua = rng.choice(_AGENTS).format(v=rng.randint(100, 125), v2=rng.randint(1, 9))
        path = rng.choice(_PATHS).replace("{n}", str(rng.randint(1, 50000)))
        ms = rng.randint(3, 4000)
        if rng.random() < 0.4:
            detail = text(rng, 10, 70).replace('"', "")
            payload = (f'{{"path": "{path}", "ms": {ms}, "ref": "{rng.choice(_DOMAINS)}", '
                       f'"ab": "{rng.choice("ABCD")}", "message": "{detail}"}}')
        else:
            payload = f'{{"path": "{path}", "ms": {ms}, "ref": "{rng.choice(_DOMAINS)}", "ab": "{rng.choice("ABCD")}"}}'
        rows.append(f"{i}\t{ts(t, rng.randrange(1000000))}\t{et}\t{uid}\t{sid}\t{ip}\t{ua}\t{payload}\n")
    return rows


def gen_products(rng, first_id, n):
    rows = []
    for i in range(first_id, first_id + n):
        name = " ".join(w.capitalize() for w in rng.choices(_WORDS, k=rng.randint(2, 5)))
        desc = text(rng, 30, 180)
        rows.append(
            f"{i}\tSKU-{rng.randint(0, 36 ** 6):06X}-{i % 97:02d}\t{name}\t{rng.choice(_CATEGORIES)}\t"
            f"{rng.randint(99, 999999) / 100:.2f}\t{rng.randint(0, 5000)}\t"
            f"{'t' if rng.random() < 0.85 else 'f'}\t{desc}\t{ts(BASE_T + i * 3600 + rng.randint(0, 3599))}\n")
    return rows


def gen_order_notes(rng, first_id, n):
    rows = []
    for i in range(first_id, first_id + n):
        author = f"{rng.choice(_FIRST).lower()}.{rng.choice(_LAST).lower()}"
        body = text(rng, 15, 120)
        rows.append(f"{i}\t{rng.randint(1, 3000000)}\t{author}\t{ts(BASE_T + i * 400 + rng.randint(0, 399))}\t"
                    f"{'t' if rng.random() < 0.1 else 'f'}\t{body}\n")
    return rows


# name, share of night-0 bytes, generator, columns (name, type, not null)
TABLES = [
    ("customers", 0.20, gen_customers, [
        ("id", "bigint", True), ("first_name", "character varying(100)", True),
        ("last_name", "character varying(100)", True), ("email", "character varying(255)", True),
        ("phone", "character varying(40)", False), ("street", "text", False),
        ("city", "character varying(100)", False), ("postal_code", "character varying(20)", False),
        ("country", "character(2)", True), ("is_active", "boolean", True),
        ("credit_limit", "numeric(12,2)", True), ("created_at", "timestamp with time zone", True),
        ("updated_at", "timestamp with time zone", True), ("notes", "text", False)]),
    ("events", 0.40, gen_events, [
        ("id", "bigint", True), ("occurred_at", "timestamp with time zone", True),
        ("event_type", "character varying(40)", True), ("user_id", "bigint", False),
        ("session_id", "uuid", True), ("ip", "inet", False), ("user_agent", "text", False),
        ("payload", "jsonb", True)]),
    ("order_notes", 0.07, gen_order_notes, [
        ("id", "bigint", True), ("order_id", "bigint", True), ("author", "character varying(100)", True),
        ("created_at", "timestamp with time zone", True), ("internal", "boolean", True), ("body", "text", True)]),
    ("orders", 0.28, gen_orders, [
        ("id", "bigint", True), ("customer_id", "bigint", True), ("status", "character varying(20)", True),
        ("currency", "character(3)", True), ("item_count", "integer", True),
        ("total_amount", "numeric(12,2)", True), ("tax_amount", "numeric(12,2)", True),
        ("shipping_amount", "numeric(10,2)", True), ("coupon_code", "character varying(40)", False),
        ("shipping_address", "text", True), ("created_at", "timestamp with time zone", True),
        ("shipped_at", "timestamp with time zone", False), ("note", "text", False)]),
    ("products", 0.05, gen_products, [
        ("id", "bigint", True), ("sku", "character varying(40)", True), ("name", "text", True),
        ("category", "character varying(40)", True), ("price", "numeric(10,2)", True),
        ("stock", "integer", True), ("available", "boolean", True), ("description", "text", False),
        ("created_at", "timestamp with time zone", True)]),
]
GEN = {t[0]: t[2] for t in TABLES}


class BlockCache:
    """Generates rows by id, one block of BLOCK ids at a time (deterministic)."""

    def __init__(self, seed):
        self.seed = seed
        self.key = None
        self.rows = None

    def block(self, table, b):
        if self.key != (table, b):
            rng = random.Random(f"{self.seed}:{table}:{b}")
            self.rows = GEN[table](rng, b * BLOCK + 1, BLOCK)
            self.key = (table, b)
        return self.rows

    def rows_for(self, table, start, end):
        """Yields lists of rows for ids start..end-1 (1-based ids)."""
        i = start
        while i < end:
            b = (i - 1) // BLOCK
            rows = self.block(table, b)
            lo = i - 1 - b * BLOCK
            hi = min(end - 1 - b * BLOCK, BLOCK)
            yield rows[lo:hi]
            i = b * BLOCK + 1 + hi


# ---------------------------------------------------------------------------
# Night plan: each table is a list of [start, end) id ranges.

def _count(ranges):
    return sum(e - s for s, e in ranges)


def _split_at(ranges, pos):
    """Splits the ranges so that a boundary falls after `pos` rows; returns the index."""
    acc = 0
    for idx, (s, e) in enumerate(ranges):
        n = e - s
        if pos == acc:
            return idx
        if pos < acc + n:
            cut = s + (pos - acc)
            ranges[idx:idx + 1] = [(s, cut), (cut, e)]
            return idx + 1
        acc += n
    return len(ranges)


def plan(seed, size_mb, night):
    # Measure the average row length of each table from its first block.
    cache = BlockCache(seed)
    counts = {}
    for name, share, _, _ in TABLES:
        rows = cache.block(name, 0)
        avg = sum(len(r) for r in rows) / len(rows)  # ASCII only: chars == bytes
        counts[name] = max(10, int(size_mb * 1e6 * share / avg))
    ranges = {name: [(1, counts[name] + 1)] for name in counts}
    next_id = {name: counts[name] + 1 for name in counts}
    for k in range(1, night + 1):
        rng = random.Random(f"{seed}:night:{k}")
        # A: orders, 2% appended
        n = _count(ranges["orders"])
        add = max(1, round(n * 0.02))
        ranges["orders"].append((next_id["orders"], next_id["orders"] + add))
        next_id["orders"] += add
        # B: events, a contiguous ~1% run deleted from the middle
        n = _count(ranges["events"])
        run = max(1, round(n * 0.01))
        at = int(n * rng.uniform(0.35, 0.60))
        i = _split_at(ranges["events"], at)
        j = _split_at(ranges["events"], at + run)
        del ranges["events"][i:j]
        # C: customers, a block of ~1% new rows inserted in the middle
        n = _count(ranges["customers"])
        add = max(1, round(n * 0.01))
        at = int(n * rng.uniform(0.40, 0.60))
        i = _split_at(ranges["customers"], at)
        ranges["customers"].insert(i, (next_id["customers"], next_id["customers"] + add))
        next_id["customers"] += add
    return cache, ranges, next_id


# ---------------------------------------------------------------------------
# Output

HEADER = """--
-- PostgreSQL database dump
--

-- Dumped from database version 15.5 (Debian 15.5-0+deb12u1)
-- Dumped by pg_dump version 15.5 (Debian 15.5-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

"""

FOOTER = """--
-- PostgreSQL database dump complete
--

"""


def ddl(name, cols):
    body = ",\n".join(f"    {c} {t}" + (" NOT NULL" if nn else "") for c, t, nn in cols)
    seq = f"{name}_id_seq"
    return (f"--\n-- Name: {name}; Type: TABLE; Schema: public; Owner: app\n--\n\n"
            f"CREATE TABLE public.{name} (\n{body}\n);\n\n\n"
            f"ALTER TABLE public.{name} OWNER TO app;\n\n"
            f"--\n-- Name: {seq}; Type: SEQUENCE; Schema: public; Owner: app\n--\n\n"
            f"CREATE SEQUENCE public.{seq}\n    START WITH 1\n    INCREMENT BY 1\n    NO MINVALUE\n"
            f"    NO MAXVALUE\n    CACHE 1;\n\n\n"
            f"ALTER TABLE public.{seq} OWNER TO app;\n\n"
            f"--\n-- Name: {seq}; Type: SEQUENCE OWNED BY; Schema: public; Owner: app\n--\n\n"
            f"ALTER SEQUENCE public.{seq} OWNED BY public.{name}.id;\n\n\n")


def write_dump(out, seed, size_mb, night):
    cache, ranges, next_id = plan(seed, size_mb, night)
    names = [t[0] for t in TABLES]  # already in pg_dump's (alphabetical) order
    cols = {t[0]: t[3] for t in TABLES}
    parts = [HEADER]
    for name in names:
        parts.append(ddl(name, cols[name]))
    for name in names:
        parts.append(f"--\n-- Name: {name} id; Type: DEFAULT; Schema: public; Owner: app\n--\n\n"
                     f"ALTER TABLE ONLY public.{name} ALTER COLUMN id SET DEFAULT "
                     f"nextval('public.{name}_id_seq'::regclass);\n\n\n")
    out.write("".join(parts).encode())
    for name in names:
        collist = ", ".join(c for c, _, _ in cols[name])
        out.write((f"--\n-- Data for Name: {name}; Type: TABLE DATA; Schema: public; Owner: app\n--\n\n"
                   f"COPY public.{name} ({collist}) FROM stdin;\n").encode())
        buf, size = [], 0
        for s, e in ranges[name]:
            for rows in cache.rows_for(name, s, e):
                buf.append("".join(rows))
                size += len(buf[-1])
                if size >= 4 << 20:
                    out.write("".join(buf).encode())
                    buf, size = [], 0
        buf.append("\\.\n\n\n")
        out.write("".join(buf).encode())
    parts = []
    for name in names:
        parts.append(f"--\n-- Name: {name}_id_seq; Type: SEQUENCE SET; Schema: public; Owner: app\n--\n\n"
                     f"SELECT pg_catalog.setval('public.{name}_id_seq', {next_id[name] - 1}, true);\n\n\n")
    for name in names:
        parts.append(f"--\n-- Name: {name} {name}_pkey; Type: CONSTRAINT; Schema: public; Owner: app\n--\n\n"
                     f"ALTER TABLE ONLY public.{name}\n    ADD CONSTRAINT {name}_pkey PRIMARY KEY (id);\n\n\n")
    parts.append(FOOTER)
    out.write("".join(parts).encode())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=200, help="approximate size of night 0 in MB (default 200)")
    ap.add_argument("--night", type=int, default=0, help="0 = base dump; k = k nights of changes after it")
    ap.add_argument("--seed", default="1", help="seed (any string; default 1)")
    ap.add_argument("--out", help="output file (default: standard output)")
    ap.add_argument("--describe", action="store_true", help="print the row ranges of each table to stderr")
    args = ap.parse_args()
    if args.size_mb <= 0 or args.night < 0:
        ap.error("--size-mb must be > 0 and --night >= 0")
    global V
    V = Vocab()
    started = time.time()
    if args.describe:
        _, ranges, _ = plan(args.seed, args.size_mb, args.night)
        for name, r in ranges.items():
            print(f"{name}: {_count(r)} rows, ranges {r}", file=sys.stderr)
    if args.out:
        with open(args.out, "wb", buffering=8 << 20) as f:
            write_dump(f, args.seed, args.size_mb, args.night)
    else:
        try:
            write_dump(sys.stdout.buffer, args.seed, args.size_mb, args.night)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            sys.exit(1)
    if args.out:
        print(f"gen-sql-dump: wrote {args.out} (night {args.night}, seed {args.seed}) in {time.time() - started:.1f}s",
              file=sys.stderr)


if __name__ == "__main__":
    main()
