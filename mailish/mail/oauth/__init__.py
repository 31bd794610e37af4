"""OAuth2 for mail logins: the provider registry, the token endpoint client and token caches.

Only talks to token endpoints; deciding *when* to refresh (and serialising refreshes across
workers with a database lock) lives in ``mailish.services.oauth_login``, because ``mail``
may not import ``store``.
"""
