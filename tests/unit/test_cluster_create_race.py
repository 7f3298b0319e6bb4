"""``bootstrap._find_or_create``: a create refused because a racing host just
made the same asset finds that asset; any other refusal stands."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.errors import BadRequestError, NotFoundError

from engine.cluster import bootstrap

OVERLAP = dict(code=400, err_code=10065, description="subjects overlap with an existing stream")


class Assets:
    """A stand-in JetStream whose asset appears only after the first create was refused."""

    def __init__(self, refusal: dict, appears: bool):
        self.refusal, self.appears, self.made, self.finds = refusal, appears, False, 0

    async def find(self):
        self.finds += 1
        if not self.made:
            raise NotFoundError(code=404, err_code=10059, description="stream not found")
        return "the stream"

    async def create(self):
        self.made = self.appears  # the racing host's create lands first
        raise BadRequestError(**self.refusal)


def test_a_lost_create_race_finds_the_winners_asset():
    a = Assets(OVERLAP, appears=True)
    assert asyncio.run(bootstrap._find_or_create(a.find, a.create)) == "the stream"
    assert a.finds == 2


def test_an_overlap_with_something_else_still_refuses():
    a = Assets(OVERLAP, appears=False)
    with pytest.raises(BadRequestError) as err:
        asyncio.run(bootstrap._find_or_create(a.find, a.create))
    assert err.value.err_code == 10065 and a.finds == 2


def test_other_refusals_are_not_retried():
    a = Assets(dict(code=400, err_code=10074, description="insufficient resources"), appears=True)
    with pytest.raises(BadRequestError):
        asyncio.run(bootstrap._find_or_create(a.find, a.create))
    assert a.finds == 1


def test_a_found_asset_is_not_created():
    a = Assets(OVERLAP, appears=True)
    a.made = True
    assert asyncio.run(bootstrap._find_or_create(a.find, a.create)) == "the stream" and a.finds == 1
