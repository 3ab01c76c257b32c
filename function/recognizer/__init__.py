"""The recognize function: preprocessing, the model-server client, the prediction store, HTTP."""

# One import root: function/ is the function's deploy root, and every tool has it on
# sys.path too (the venv's .pth, written by the Makefile). Imported under another name
# (function.recognizer), each module would exist twice, with two of each error class.
if __name__ != "recognizer":
    raise ImportError(
        f"the function's package is imported as {__name__!r}: import it as `recognizer`, "
        "with function/ on sys.path (`make setup` writes a .pth into the venv for it)"
    )
