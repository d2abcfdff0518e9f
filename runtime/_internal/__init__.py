"""Internals of the serving-side safe load: archive pre-scan, allowlist, structural validators."""
