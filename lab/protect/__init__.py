"""The data owner's job: protect a real audio collection with a private key, safely, and verify the result.

- :mod:`lab.protect.keygen`: a new random key file (owner-only permissions, never overwritten);
- :mod:`lab.protect.collection`: finding the audio files under INPUT and their labels;
- :mod:`lab.protect.audiofile`: decoding and re-encoding a file in its own format, rate, channels and subtype;
- :mod:`lab.protect.worker`: what one worker process does to one file (protect it with the defense's own
  ``Protection.apply``, or check it);
- :mod:`lab.protect.manifest`: the public manifest in OUTPUT (what may be published) and the owner's private record
  outside it (what the protection applied: never in OUTPUT);
- :mod:`lab.protect.protector`: which defenses can be applied file by file; deriving the protection at each sample
  rate; streaming a collection through worker processes with atomic writes and resume;
- :mod:`lab.protect.verify`: re-deriving the protection from the key and checking OUTPUT against the record, and
  naming the sources that have no protected copy.
"""
__all__ = ["new_key_file", "protect_collection", "verify_collection"]
_WHERE = {"new_key_file": "keygen", "protect_collection": "protector", "verify_collection": "verify"}


def __getattr__(name: str):
    # imported on first use: `lab keygen` should not pay for importing torch
    if name in _WHERE:
        import importlib
        return getattr(importlib.import_module(f"lab.protect.{_WHERE[name]}"), name)
    raise AttributeError(name)
