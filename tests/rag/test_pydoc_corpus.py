"""`ember rag pydoc`: one file per topic; a rerun leaves them alone; a user's file is never overwritten."""

import pytest

from ember.rag.pydoc_corpus import topic_texts, write_pydoc_topics


def test_topics_are_written_once_and_a_users_file_is_never_overwritten(tmp_path):
    paths = write_pydoc_topics(tmp_path)
    assert len(paths) == len(topic_texts()) and all(p.is_file() for p in paths)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert write_pydoc_topics(tmp_path) == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes  # unchanged files are not rewritten
    paths[0].write_text("my own notes")
    with pytest.raises(FileExistsError, match=paths[0].name):
        write_pydoc_topics(tmp_path)
    assert paths[0].read_text() == "my own notes"
