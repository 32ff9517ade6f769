"""Data: corpora, shards, packing, chats, preferences. For now the bundled corpus."""
