"""Thin Invoke task modules: resolve config and flags, call one library function, print."""
