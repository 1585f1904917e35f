"""The UCI Adult schema: column names, the label and the default vertical split. No imports, so that both the
config checks (:mod:`flwr_vproto.config`) and the data loader (:mod:`flwr_vproto.data.adult`) can use it without
importing each other."""

COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
           "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country"]
NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
LABEL = "income"
CLASS_NAMES = ["<=50K", ">50K"]
# Default split: a bank holding demographics and the label; a second organisation holding household and job data.
ACTIVE_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "race", "sex", "native-country",
                  "capital-loss"]
PASSIVE_COLUMNS = ["marital-status", "occupation", "relationship", "capital-gain", "hours-per-week"]
