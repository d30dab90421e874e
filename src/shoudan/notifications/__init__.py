"""Side effects leave the system through here: the transactional outbox and its relay."""
