"""The browser-facing HTTP layer: sessions, CSRF, passwords, single sign-on routes and the end user's landing
page. The console (``scimgrip.console``) builds on it; ``install_web`` mounts both into the SCIM app."""
