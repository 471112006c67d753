"""Speech providers: the implementations of ``actors.services.TtsProvider`` the entry point hands to calls."""
