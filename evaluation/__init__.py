"""How honest the answers are: `python -m evaluation` runs labelled uploads through the stack.

Real HTTP, the real function and the development model server, every image a file
through POST /predict; it prints the acceptance figures of verdicts (docs/verdicts.md).
"""
