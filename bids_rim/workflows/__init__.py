"""Nipype workflow factories: ``init_participant_wf``, ``init_session_wf``."""
