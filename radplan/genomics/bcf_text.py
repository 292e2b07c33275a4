"""Decode a BCF to VCF text: ``python -m radplan.genomics.bcf_text IN.bcf OUT.vcf``.

Run as a worker process by :mod:`radplan.genomics.vcf` so that a crash inside htslib on a damaged BCF ends this
process only, and the caller turns the exit status into a clean error for that file.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import cyvcf2

    source, target = argv
    reader = cyvcf2.VCF(source, lazy=True)
    writer = cyvcf2.Writer(target, reader, mode="w")
    for record in reader:
        writer.write_record(record)
    writer.close()
    reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
