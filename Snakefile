# unitscope: what single units of a vision CNN do, proven with interventions.
# This file is the table of contents; every stage lives in rules/<stage>.smk and its logic in src/unitscope.


include: "rules/common.smk"  # reads and validates config/config.yaml (a YAML error names its line and column)
include: "rules/report.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/extract.smk"
include: "rules/faces.smk"
include: "rules/actmax.smk"
include: "rules/nefesi.smk"
include: "rules/dissection.smk"
include: "rules/lesions.smk"
include: "rules/atlas.smk"  # the unit atlas: `snakemake atlas` (not yet in the report)
