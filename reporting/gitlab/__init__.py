"""The GitLab side: the client, the MR comment, the wiki, packages, promotion, production."""
