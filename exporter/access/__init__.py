"""Who is asking and what they may do: tokens and keys, grants and restrictions, sessions, signed links,
and admission."""
