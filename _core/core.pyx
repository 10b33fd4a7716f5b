# cython: language_level=3
# Placeholder: the compiled engine is being written; replaced shortly.
ENGINE = "placeholder"
