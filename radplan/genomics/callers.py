"""Which variant caller wrote a VCF, which sample is the tumour and which the normal, and whether radplan can read it.

Everything here is decided from the header (plus, for VarDict, the INFO ``SAMPLE`` tag its paired mode writes
on every record), never from column order:

* ``##tumor_sample=`` / ``##normal_sample=`` (GATK Mutect2, also written by DRAGEN and bcbio);
* ``##SAMPLE=<ID=TUMOR|NORMAL,...>`` (TCGA/GDC VCF convention);
* sample columns literally named ``TUMOR``/``TUMOUR``/``NORMAL`` (Strelka2 and VarScan2 always name them so);
* VarDict paired mode: INFO ``SAMPLE`` names the tumour sample.

A sample the header does not identify gets role ``None`` (reported as unknown), never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from radplan.errors import InvalidVcfError

# (caller, header-line pattern): the first match names the caller.
_CALLER_SIGNATURES = [
    ("Strelka2", re.compile(r"^##source=strelka|^##content=strelka", re.I | re.M)),
    ("Mutect2", re.compile(r"^##source=Mutect2|^##GATKCommandLine=<ID=Mutect2|^##MutectVersion=", re.M)),
    ("MuTect", re.compile(r"^##MuTect=", re.M)),
    ("VarScan2", re.compile(r"^##source=VarScan", re.I | re.M)),
    ("VarDict", re.compile(r"^##source=VarDict", re.I | re.M)),
    ("DeepVariant", re.compile(r"^##source=DeepVariant|^##DeepVariant_version=", re.I | re.M)),
    ("GATK HaplotypeCaller", re.compile(r"^##GATKCommandLine=<ID=HaplotypeCaller|^##source=HaplotypeCaller", re.M)),
    ("DRAGEN", re.compile(r"^##source=DRAGEN|^##DRAGENCommandLine", re.M)),
]
_TUMOUR_NAMES = {"TUMOR", "TUMOUR"}
_NORMAL_NAMES = {"NORMAL"}
STRELKA_SNV_COUNTS = ("AU", "CU", "GU", "TU")
STRELKA_INDEL_COUNTS = ("TAR", "TIR")


@dataclass
class CallerProfile:
    """The caller, the evidence for it, and the role (tumor | normal | None) of each raw sample name."""

    caller: str
    evidence: str | None
    roles: dict[str, str | None] = field(default_factory=dict)
    gvcf: bool = False

    def role_list(self, samples: list[str]) -> list[str | None]:
        return [self.roles.get(s) for s in samples]


def _header_roles(raw_header: str, samples: list[str]) -> dict[str, str | None]:
    roles: dict[str, str | None] = {s: None for s in samples}
    for role, pattern in (("tumor", r"^##tumor_sample=(.+)$"), ("normal", r"^##normal_sample=(.+)$")):
        for name in re.findall(pattern, raw_header, re.M):
            if name.strip() in roles:
                roles[name.strip()] = role
    for sample_id in re.findall(r"^##SAMPLE=<ID=([^,>]+)", raw_header, re.M):
        if sample_id in roles and roles[sample_id] is None:
            upper = sample_id.upper()
            roles[sample_id] = "tumor" if upper in _TUMOUR_NAMES else "normal" if upper in _NORMAL_NAMES else None
    for name in samples:
        if roles[name] is None:
            upper = name.upper()
            roles[name] = "tumor" if upper in _TUMOUR_NAMES else "normal" if upper in _NORMAL_NAMES else None
    return roles


def identify_caller(raw_header: str, samples: list[str]) -> CallerProfile:
    """Caller and sample roles from the header text (all ``##`` lines and ``#CHROM``)."""
    caller, evidence = "unknown", None
    for name, pattern in _CALLER_SIGNATURES:
        match = pattern.search(raw_header)
        if match:
            caller, evidence = name, match.group(0)
            break
    gvcf = bool(re.search(r"^##GVCFBlock|^##ALT=<ID=NON_REF|^##ALT=<ID=\*,", raw_header, re.M))
    return CallerProfile(caller, evidence, _header_roles(raw_header, samples), gvcf)


def assign_vardict_tumour(profile: CallerProfile, info_sample: str | None) -> None:
    """VarDict paired mode writes the tumour sample's name in INFO ``SAMPLE``; the other sample is the normal."""
    if profile.caller != "VarDict" or not info_sample or info_sample not in profile.roles or len(profile.roles) != 2:
        return
    if any(role is not None for role in profile.roles.values()):
        return
    for name in profile.roles:
        profile.roles[name] = "tumor" if name == info_sample else "normal"


def check_supported(profile: CallerProfile, file_name: str, format_ids: dict[str, str], has_samples: bool) -> None:
    """Raise :class:`InvalidVcfError` naming the caller the file looks like and the FORMAT fields it lacks.

    ``format_ids`` maps each declared FORMAT ID to its ``Number``. A file with samples must carry a genotype or
    allele counts radplan knows how to read.
    """
    if not has_samples:
        return
    declared = set(format_ids)
    looks_like = f"looks like {profile.caller} output ({profile.evidence})" if profile.evidence else "unknown caller"
    if profile.caller == "Strelka2":
        if not (set(STRELKA_SNV_COUNTS) <= declared or set(STRELKA_INDEL_COUNTS) <= declared):
            missing = sorted((set(STRELKA_SNV_COUNTS) | set(STRELKA_INDEL_COUNTS)) - declared)
            raise InvalidVcfError(f"{file_name}: unsupported VCF: {looks_like} but the header declares no tier-1 "
                                  f"allele counts (FORMAT {', '.join(missing)} missing: SNVs need AU/CU/GU/TU, "
                                  "indels TAR/TIR)")
        return
    required = {"Mutect2": ("GT", "AD"), "VarScan2": ("GT", "RD", "AD"), "VarDict": ("GT", "AD"),
                "DeepVariant": ("GT",), "GATK HaplotypeCaller": ("GT",)}.get(profile.caller)
    if required:
        missing = [key for key in required if key not in declared]
        if missing:
            raise InvalidVcfError(f"{file_name}: unsupported VCF: {looks_like} but FORMAT {', '.join(missing)} "
                                  "is not declared in the header")
        return
    # A header declaring no FORMAT at all is read as written (htslib accepts undeclared keys too).
    if declared and not ({"GT", "AD"} & declared or set(STRELKA_SNV_COUNTS) <= declared or set(STRELKA_INDEL_COUNTS) <= declared):
        raise InvalidVcfError(f"{file_name}: unsupported VCF: {looks_like}; its samples carry no genotype or allele "
                              "counts (none of FORMAT GT, AD, Strelka AU/CU/GU/TU or TAR/TIR is declared)")
