"""The ground floor of files: weight files in and out (checkpoint.py), images and videos out (media.py).

Nothing here imports the models, callbacks or evaluation code that use it.
"""
