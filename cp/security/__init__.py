"""Identity and message authentication (docs/security.md): keys, signed envelopes, enrolment."""
