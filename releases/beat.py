"""The beat scheduler: every periodic job is sent once per period of its interval, whatever the
number of beats running, and without a schedule file.

Time is cut into periods of each job's interval, counted from the epoch (an hourly job's period is
the clock hour). In each period the first beat to claim the job's period in Redis (SET NX, expiring
after one interval) sends it; every other beat sees the claim and does not. So two beats send each
job once, a beat that restarts sends a job at once if its current period has not run yet (not one
interval after its start, as a file-less celery beat would), and nothing needs a volume.
Without Redis (the embedded default, one beat) the claims live in this process.
"""

from __future__ import annotations

import logging
import time

from celery.beat import Scheduler
from celery.schedules import schedule as interval_schedule
from django.conf import settings

logger = logging.getLogger(__name__)

RETRY_SECONDS = 5  # Redis unreachable: ask again this soon, the period is not over


class PeriodClaims:
    """Who sent a job in a period: the first to SET NX its key in Redis (or, without Redis, in this process)."""

    def __init__(self, redis_url: str):
        self.local: dict[tuple[str, int], int] = {}  # (job, interval) -> the last period claimed
        self.redis = None
        if redis_url:
            import redis

            self.redis = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)

    def claim(self, name: str, interval: int, period: int) -> bool:
        if self.redis is None:
            if self.local.get((name, interval), -1) >= period:
                return False
            self.local[name, interval] = period
            return True
        key = f"model-releases:beat:{name}:{interval}:{period}"
        return bool(self.redis.set(key, "sent", nx=True, ex=interval))


class PeriodScheduler(Scheduler):
    """celery beat's scheduler for interval jobs, deciding with PeriodClaims instead of a schedule file."""

    def setup_schedule(self):
        self.merge_inplace(self.app.conf.beat_schedule)
        self.claims = PeriodClaims(settings.REDIS_URL)
        self.decided: dict[str, int] = {}  # job -> the last period this beat settled (sent or saw sent)
        for entry in self.schedule.values():
            interval = interval_of(entry)
            # A run left waiting in the queue past its period is dropped: the next period's run replaces it.
            entry.options.setdefault("expires", interval)

    def install_default_entries(self, data):
        """None: results are not kept (task_ignore_result), so there is nothing to clean up."""

    def tick(self, *args, **kwargs) -> float:
        """Settle every job whose current period this beat has not settled; sleep until the next period."""
        now = time.time()
        waits = [float(self.max_interval)]
        for entry in list(self.schedule.values()):
            interval = interval_of(entry)
            period = int(now // interval)
            if self.decided.get(entry.name) != period:
                if self.settle(entry, interval, period):
                    self.decided[entry.name] = period
                else:
                    waits.append(RETRY_SECONDS)
            waits.append((period + 1) * interval - now)
        return max(0.0, min(waits))

    def settle(self, entry, interval: int, period: int) -> bool:
        """Send the job if this beat claims the period; whether the period is settled."""
        try:
            claimed = self.claims.claim(entry.name, interval, period)
        except Exception as error:  # Redis unreachable: nothing sent, try again in a few seconds
            logger.warning("beat: could not claim %s for period %d (%s); trying again", entry.name, period, error)
            return False
        if claimed:
            logger.info("beat: %s: sending the run of period %d", entry.name, period)
            self.apply_entry(entry, producer=self.producer)
        else:
            logger.info("beat: %s: period %d was sent by another scheduler", entry.name, period)
        return True


def interval_of(entry) -> int:
    """The job's interval in whole seconds; only interval schedules have periods."""
    if not isinstance(entry.schedule, interval_schedule):
        raise ValueError(f"beat job {entry.name}: PeriodScheduler runs interval schedules only, not {entry.schedule!r}")
    return max(1, int(entry.schedule.run_every.total_seconds()))
