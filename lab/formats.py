"""The one list of audio file extensions the lab reads and writes (folder datasets, `lab fad`, `lab audit`, `lab
protect`, `lab verify`): everything soundfile's bundled libsndfile decodes with no system FFmpeg. One list, so that
`lab protect` never writes a file (an `.aiff`, say) that the lab's own readers then do not see."""
from __future__ import annotations

AUDIO_EXTENSIONS = (".aif", ".aifc", ".aiff", ".au", ".caf", ".flac", ".mp3", ".oga", ".ogg", ".opus", ".rf64",
                    ".snd", ".w64", ".wav", ".wave")
