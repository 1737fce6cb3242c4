"""Applied migrations are recognised by their checksum, also from before a comment rewording."""

from __future__ import annotations

from roadwatch.adapters.mysql.migrate import EARLIER_CHECKSUMS, load_migrations


def test_every_shipped_migration_matches_its_own_checksum_and_no_other() -> None:
    migrations = load_migrations()
    assert migrations
    for migration in migrations:
        assert migration.matches(migration.checksum)
        assert not migration.matches("0" * 64)


def test_databases_migrated_before_the_comments_were_reworded_see_no_change() -> None:
    by_name = {migration.name: migration for migration in load_migrations()}
    assert set(EARLIER_CHECKSUMS) <= set(by_name)
    for name, earlier in EARLIER_CHECKSUMS.items():
        for checksum in earlier:
            assert checksum != by_name[name].checksum
            assert by_name[name].matches(checksum)
        other = next(m for m in by_name.values() if m.name != name)
        assert not any(other.matches(checksum) for checksum in earlier)
