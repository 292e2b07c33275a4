"""An evaluation set for note de-identification that the recognizers were not written against.

Values come from data written by others (the Synthea CSV export in shared/data: patient and
clinician names with Synthea's digits removed, street addresses, cities, ZIP codes, organisation
phone numbers), never from radplan.synth's lists. The templates below are not the note generator's:
all-caps headers, "Pt", initials, "Dr. X", one-line addresses, dates in many spellings, ages over
and under 89, phone and fax, e-mail, URLs, IP addresses, record ids and device serials, and clinical
words that look like names ("Hodgkin", "Parkinson", "EGFR") and must not be counted as PHI.

Each record is ``{"text", "spans": [{"type", "start", "end"}]}``; gold types: NAME, ADDRESS,
LOCATION, DATE, AGE, PHONE, EMAIL, URL, IP, ID. The PHI is labelled where it is placed, so the gold
spans do not depend on any detector.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
import re
from pathlib import Path

GOLD_TYPES = ("NAME", "ADDRESS", "LOCATION", "DATE", "AGE", "PHONE", "EMAIL", "URL", "IP", "ID")

# {TYPE:field}: a PHI value of TYPE drawn for this note; {-:field}: a drawn value that is not PHI (an age
# under 90); {ORG:field}: an organisation's name (not a Safe Harbor identifier: neither required nor held
# against precision); text outside braces is not PHI.
TEMPLATES = [
    "RADIATION ONCOLOGY FOLLOW-UP\nPT: {NAME:LAST_UP}, {NAME:FIRST_UP}   DOB: {DATE:dob_slash}   ACCT#: {ID:acct}\n"
    "Pt is a {-:young} y/o with classical Hodgkin lymphoma, s/p ABVD x6. Seen today with {NAME:first}'s daughter.\n"
    "Dr. {NAME:clin_last} reviewed PET-CT from {DATE:visit_long}. No Parkinson disease symptoms.",
    "Discharge summary for {NAME:full} ({NAME:initials}), admitted {DATE:visit_iso} and discharged {DATE:visit2_dmy}.\n"
    "Home: {ADDRESS:street}, {LOCATION:city}, {ADDRESS:state_zip}. Phone {PHONE:phone}; fax {PHONE:fax}.\n"
    "EGFR exon 19 deletion; continue osimertinib 80 mg daily.",
    "IMPRESSION: 2.1 cm spiculated RUL nodule, Lung-RADS 4B.\nDictated by {NAME:clin_full}, MD on {DATE:visit_short}. "
    "cc: Dr. {NAME:clin2_initial_last}\nAccession {ID:accession}",
    "The patient, a {AGE:old}-year-old widow from {LOCATION:city}, lives alone at {ADDRESS:street} {ADDRESS:unit}. "
    "Her son {NAME:relative} can be reached at {PHONE:phone_dots} or {EMAIL:email}.",
    "Pacemaker interrogation: device serial no. {ID:serial}, lead model 5076. Last interrogation {DATE:visit_month_day}. "
    "Patient {NAME:first} {NAME:last} tolerated the procedure.",
    "Ms. {NAME:last} called the clinic on {DATE:visit_us_dash} asking about her Crohn's flare. "
    "Portal message sent via {URL:url}. Member ID: {ID:member}.",
    "Tumor board {DATE:visit_written}: {NAME:first_initial}. {NAME:last}, {-:young} yo M, stage IIIA NSCLC, KRAS G12C. "
    "Referred by {NAME:clin_full} at {ORG:org}. SSN on file {ID:ssn}.",
    "{NAME:LAST_UP}, {NAME:FIRST_UP} {NAME:middle_initial}.\n{ADDRESS:full_line}\nTel: {PHONE:phone_paren}\n"
    "Reason for visit: Graves' disease follow-up, TSH 0.01.",
    "Telehealth visit. The patient connected from IP {IP:ip} at {DATE:visit_time}. Mr. {NAME:last} reports "
    "his wife {NAME:relative} drives him to {LOCATION:city} for infusions.",
    "Pathology: invasive ductal carcinoma, ER+/PR+/HER2-. Specimen {ID:specimen} received {DATE:visit_slash_short}. "
    "Signed: {NAME:clin_last_comma_first}, MD. Patient age {AGE:very_old}.",
    "MRN {ID:mrn} | {NAME:full} | {-:young}F | Adm {DATE:visit_slash} | Attending: {NAME:clin_initial_last}\n"
    "Hx of Alzheimer's dementia; daughter {NAME:relative} is health care proxy, {PHONE:phone}.",
    "Pt seen by Dr {NAME:clin_last} w/ resident {NAME:clin2_full}. Lives in {LOCATION:city}, works as a teacher. "
    "Smoker 20 pack-years, quit 2015. Next visit {DATE:next_long}.",
]

# Written late, and scored on their own ("independent_held_out"). First measured before any rule had seen them
# (name recall 0.80, all-PHI recall 0.86, precision 0.98 on 60 notes); the faults they showed (dotted ages,
# UDIs, lower-case name pairs, bracketed nicknames) were fixed afterwards, so they are no longer blind.
HELD_OUT_TEMPLATES = [
    "text from pt: hi its {NAME:first_lower} {NAME:last_lower}, my new cell is {PHONE:phone_intl}, can dr {NAME:clin_last_lower} call me back",
    "Nurse Practitioner {NAME:clin_full} documented: patient's partner {NAME:relative} {NAME:last} (emergency contact) "
    "lives on {ADDRESS:po_box}, {LOCATION:city} {ADDRESS:zip}. Labs drawn {DATE:visit_dots}.",
    "ONCOLOGY NURSING NOTE {DATE:visit_ymd_slash}\n{NAME:LAST_UP} {NAME:FIRST_UP}, {-:young} yo, returns for cycle 3 of FOLFOX. "
    "Insulin pump UDI {ID:udi}. Reach her at {EMAIL:email_angle} or {URL:www}.",
    "Consult requested by Dr. {NAME:clin_hyphen} ({PHONE:phone_ext}). The {AGE:old} y.o. gentleman from {LOCATION:city} "
    "has Waldenstrom macroglobulinemia and a history of Bell's palsy. Plate {ID:plate} noted for parking validation.",
    "{NAME:first} ({NAME:nickname}) {NAME:last} was transferred from {ORG:org} on {DATE:visit_abbrev}; "
    "CSN {ID:csn}; pharmacy called {PHONE:phone} re: capecitabine dosing (DPYD *2A heterozygous).",
    "Addendum {DATE:visit_iso_t}: spoke with {NAME:relative} (patient's sister) at {PHONE:phone_dots}. She confirmed the home "
    "address {ADDRESS:street}, {LOCATION:city}, Massachusetts {ADDRESS:zip}. Hospice referral to follow.",
]


def _strip_digits(value: str) -> str:
    # Synthea appends digits to names ("Maynard46") so that they are unique; real names have none.
    return re.sub(r"\d+", "", value).strip()


def _read(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


class _Pools:
    def __init__(self, synthea_csv: Path):
        patients = _read(synthea_csv / "patients.csv")
        providers = _read(synthea_csv / "providers.csv")
        organizations = _read(synthea_csv / "organizations.csv")
        self.first = sorted({_strip_digits(p["FIRST"]) for p in patients} | {_strip_digits(p["NAME"].split()[0]) for p in providers})
        self.last = sorted({_strip_digits(p["LAST"]) for p in patients} | {_strip_digits(p["NAME"].split()[-1]) for p in providers})
        self.streets = sorted({p["ADDRESS"] for p in patients} | {o["ADDRESS"].title() for o in organizations})
        self.cities = sorted({p["CITY"] for p in patients} | {o["CITY"].title() for o in organizations})
        self.zips = sorted({o["ZIP"].zfill(5) for o in organizations if o["ZIP"]})
        self.phones = sorted({o["PHONE"] for o in organizations if len(o.get("PHONE") or "") == 10})
        self.orgs = sorted({o["NAME"].title() for o in organizations})
        self.ssns = sorted({p["SSN"] for p in patients})


def _phone(digits: str, style: str) -> str:
    a, b, c = digits[:3], digits[3:6], digits[6:]
    return {"dash": f"{a}-{b}-{c}", "dots": f"{a}.{b}.{c}", "paren": f"({a}) {b}-{c}"}[style]


def _values(pools: _Pools, rng: random.Random) -> dict[str, str]:
    first, last = rng.choice(pools.first), rng.choice(pools.last)
    clin_first, clin_last = rng.choice(pools.first), rng.choice(pools.last)
    clin2_first, clin2_last = rng.choice(pools.first), rng.choice(pools.last)
    dob = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(365 * 70))
    visit = dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(365 * 9))
    visit2 = visit + dt.timedelta(days=rng.randrange(2, 20))
    nxt = visit + dt.timedelta(days=rng.randrange(20, 120))
    phone = rng.choice(pools.phones)
    zip_code = rng.choice(pools.zips)
    return {
        "first": first, "last": last, "full": f"{first} {last}", "FIRST_UP": first.upper(), "LAST_UP": last.upper(),
        "initials": f"{first[0]}.{last[0]}.", "first_initial": first[0], "middle_initial": rng.choice("ABCDEFGHJKLMNPRSTW"),
        "relative": rng.choice(pools.first), "clin_last": clin_last, "clin_full": f"{clin_first} {clin_last}",
        "clin2_full": f"{clin2_first} {clin2_last}", "clin2_initial_last": f"{clin2_first[0]}. {clin2_last}",
        "clin_initial_last": f"{clin_first[0]}. {clin_last}", "clin_last_comma_first": f"{clin_last}, {clin_first}",
        "dob_slash": f"{dob:%m/%d/%Y}", "visit_long": f"{visit:%B} {visit.day}, {visit.year}", "visit_iso": visit.isoformat(),
        "visit2_dmy": f"{visit2.day} {visit2:%b} {visit2.year}", "visit_short": f"{visit.month}/{visit.day}/{visit:%y}",
        "visit_month_day": f"{visit:%b}. {visit.day}", "visit_us_dash": f"{visit:%m-%d-%Y}",
        "visit_written": f"{visit.day}{'th' if 4 <= visit.day <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(visit.day % 10, 'th')} of {visit:%B} {visit.year}",
        "visit_time": f"{visit:%Y-%m-%d} 14:32", "visit_slash_short": f"{visit:%m/%d/%y}", "visit_slash": f"{visit:%m/%d/%Y}",
        "next_long": f"{nxt:%A}, {nxt:%B} {nxt.day}", "young": str(rng.randrange(34, 88)), "old": str(rng.randrange(90, 104)),
        "very_old": f"{rng.randrange(90, 101)} years",
        "street": rng.choice(pools.streets), "unit": f"Apt {rng.randrange(1, 40)}", "city": rng.choice(pools.cities),
        "state_zip": f"MA {zip_code}", "full_line": f"{rng.choice(pools.streets)}, {rng.choice(pools.cities)}, MA {zip_code}",
        "org": rng.choice(pools.orgs), "phone": _phone(phone, "dash"), "phone_dots": _phone(phone, "dots"),
        "phone_paren": _phone(phone, "paren"), "fax": _phone(rng.choice(pools.phones), "dash"),
        "email": f"{first.lower()}.{last.lower()}{rng.randrange(10, 99)}@{rng.choice(['gmail.com', 'yahoo.com', 'comcast.net'])}",
        "url": f"https://mychart.{clin_last.lower()}health.org/visit/{rng.randrange(10**5, 10**6)}",
        "ip": f"{rng.randrange(11, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        "acct": f"{rng.randrange(10**7, 10**8)}", "accession": f"RAD{rng.randrange(10**6, 10**7)}",
        "serial": f"PJN{rng.randrange(10**6, 10**7)}S", "member": f"XGH{rng.randrange(10**8, 10**9)}",
        "first_lower": first.lower(), "last_lower": last.lower(), "clin_last_lower": clin_last.lower(),
        "phone_intl": "+1 " + _phone(phone, "dash"), "phone_ext": _phone(rng.choice(pools.phones), "paren") + f" ext. {rng.randrange(100, 9999)}",
        "po_box": f"PO Box {rng.randrange(10, 9999)}", "zip": zip_code, "visit_dots": f"{visit:%d.%m.%Y}",
        "visit_ymd_slash": f"{visit:%Y/%m/%d}", "udi": f"(01)00{rng.randrange(10**11, 10**12)}(17){visit:%y%m%d}(10)A{rng.randrange(1000, 9999)}",
        "email_angle": f"<{first.lower()}{rng.randrange(10, 99)}@outlook.com>", "www": f"www.{last.lower()}family.net",
        "clin_hyphen": f"{clin_last}-{rng.choice(pools.last)}", "plate": f"{rng.randrange(1, 9)}{rng.choice('ABCDEFGHJKLMNPRSTVWXYZ')}{rng.choice('ABCDEFGHJKLMNPRSTVWXYZ')}{rng.randrange(100, 999)}",
        "nickname": rng.choice(["Bud", "Sunny", "Red", "Skip", "Babs", "Dot"]), "visit_abbrev": f"{visit:%d-%b-%y}".upper(),
        "csn": f"{rng.randrange(10**9, 10**10)}", "visit_iso_t": f"{visit:%Y-%m-%d}T09:15",
        "ssn": rng.choice(pools.ssns), "specimen": f"S{visit:%y}-{rng.randrange(1000, 99999)}", "mrn": f"{rng.randrange(10**6, 10**7)}",
    }


def _fill(template: str, values: dict[str, str]) -> dict:
    text, spans, position = [], [], 0
    for part in re.split(r"(\{[A-Z-]+:\w+\})", template):
        m = re.fullmatch(r"\{([A-Z-]+):(\w+)\}", part)
        value = values[m.group(2)] if m else part
        if m and m.group(1) != "-":
            kind = None if m.group(1) == "ORG" else m.group(1)
            spans.append({"type": kind, "start": position, "end": position + len(value)})
        text.append(value)
        position += len(value)
    return {"text": "".join(text), "spans": spans}


def independent_notes(synthea_csv: Path, *, count: int = 120, seed: int = 19, held_out: bool = False) -> list[dict]:
    """``count`` notes, cycling through the templates (or the held-out ones) with fresh values each time."""
    pools = _Pools(synthea_csv)
    rng = random.Random(seed)
    templates = HELD_OUT_TEMPLATES if held_out else TEMPLATES
    return [_fill(templates[i % len(templates)], _values(pools, rng)) for i in range(count)]


# presidio-research gold types -> ours; ORGANIZATION and TITLE are not Safe Harbor identifiers.
PRESIDIO_RESEARCH_TYPES = {
    "PERSON": "NAME", "ADDRESS": "ADDRESS", "LOCATION": "LOCATION", "PHONE_NUMBER": "PHONE", "DATE_TIME": "DATE",
    "EMAIL_ADDRESS": "EMAIL", "US_SSN": "ID", "IP_ADDRESS": "IP", "CREDIT_CARD": "ID", "US_DRIVER_LICENSE": "ID",
    "DOMAIN_NAME": "URL", "ORGANIZATION": None, "TITLE": None,
}


def presidio_research_notes(records: list[dict]) -> list[dict]:
    """presidio-research ``generated_small.json`` records in this module's format (unscored types kept as ``None``)."""
    return [
        {"text": r["full_text"], "spans": [{"type": PRESIDIO_RESEARCH_TYPES.get(s["entity_type"], s["entity_type"]),
                                            "start": s["start_position"], "end": s["end_position"]} for s in r["spans"]]}
        for r in records
    ]


def _occurrences(text: str, value: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"(?<!\w)" + re.escape(value) + r"(?!\w)", text)] if value else []


_GENERATED_DATES = re.compile(
    r"\b\d{2}/\d{2}/\d{4}\b|\b(?:January|February|March|April|May|June|July|August|September|October|November|December) \d{1,2}, \d{4}\b"
)


def generator_notes(*, patients: int = 12, seed: int = 7) -> list[dict]:
    """radplan.synth's own notes with gold spans from the values the generator put in (the second,
    separate score: these notes are the ones the recognizers were first written against)."""
    from radplan.synth.cohort import draw_patient
    from radplan.synth.notes import clinical_notes

    records = []
    for index in range(patients):
        plan = draw_patient(seed, index)
        people = [plan.first, plan.last, plan.first.upper(), plan.last.upper(), plan.oncologist]
        people += [study.physician for study in plan.studies]
        typed = [("NAME", v) for v in people] + [
            ("ID", plan.mrn), ("PHONE", plan.phone), ("ADDRESS", plan.address_line), ("PHONE", plan.institution["phone"]),
            ("ADDRESS", plan.institution["address"]),
        ] + [("ID", study.accession) for study in plan.studies]
        for _kind, _day, text in clinical_notes(plan, seed):
            spans = [{"type": t, "start": s, "end": e} for t, v in typed for s, e in _occurrences(text, v)]
            spans += [{"type": "DATE", "start": m.start(), "end": m.end()} for m in _GENERATED_DATES.finditer(text)]
            spans += [{"type": "AGE", "start": m.start(), "end": m.end()} for m in re.finditer(r"\b(?:9\d|1[0-4]\d)(?=-year-old)", text)]
            # The institution's name is not a Safe Harbor identifier: neither required nor held against precision.
            spans += [{"type": None, "start": s, "end": e} for s, e in _occurrences(text, plan.institution["name"])]
            records.append({"text": text, "spans": spans})
    return records
