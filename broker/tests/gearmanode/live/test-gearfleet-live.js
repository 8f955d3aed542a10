// gearfleet's own live checks through the GearmaNode client library (not part of the upstream
// suite). They run against whatever server listens on localhost:4730, so the same file is run
// against gearmand for comparison. Every test uses its own function name so that jobs left over
// by one test never reach another.
var should     = require('should'),
    gearmanode = require('../lib/gearmanode');

var seq = 0;
function fname(tag) { return 'gf_live_' + tag + '_' + process.pid + '_' + (seq++); }

describe('gearfleet live (GearmaNode client)', function() {
    this.timeout(5000);
    var w, c;
    beforeEach(function() { w = gearmanode.worker(); c = gearmanode.client(); });
    afterEach(function() { w.resetAbilities(); w.close(); c.close(); });

    it('passes payload and unique key through to a GRAB_JOB_UNIQ worker', function(done) {
        var f = fname('uniq'), wu = gearmanode.worker({withUnique: true});
        wu.addFunction(f, function(job) {
            job.payload.toString().should.equal('abc');
            String(job.unique).should.equal('my-unique-1');
            job.workComplete('ok');
        });
        var job = c.submitJob(f, 'abc', {unique: 'my-unique-1'});
        job.on('complete', function() {
            job.response.toString().should.equal('ok');
            wu.resetAbilities(); wu.close();
            done();
        });
    })

    it('relays WORK_STATUS and WORK_WARNING to the client', function(done) {
        var f = fname('status'), got = [];
        w.addFunction(f, function(job) {
            job.reportStatus(1, 2);
            job.reportWarning('careful');
            job.workComplete('fin');
        });
        var job = c.submitJob(f, 'x');
        job.on('status', function(s) { got.push('status ' + s.percent_done_num + '/' + s.percent_done_den); });
        job.on('warning', function(d) { got.push('warning ' + d.toString()); });
        job.on('complete', function() {
            got.should.eql(['status 1/2', 'warning careful']);
            done();
        });
    })

    it('turns WORK_FAIL into a failed job', function(done) {
        var f = fname('fail');
        w.addFunction(f, function(job) { job.reportError(); });
        var job = c.submitJob(f, 'x');
        job.on('failed', function() { done(); });
        job.on('complete', function() { done(new Error('complete instead of failed')); });
    })

    it('sends WORK_EXCEPTION to a client that enabled the exceptions option', function(done) {
        var f = fname('exc');
        w.addFunction(f, function(job) { job.reportException('boom'); });
        var js = c.jobServers[0];
        js.once('option', function(name) {
            name.should.equal('exceptions');
            var job = c.submitJob(f, 'x');
            job.on('exception', function(d) { d.toString().should.equal('boom'); done(); });
            job.on('failed', function() { done(new Error('WORK_FAIL instead of WORK_EXCEPTION')); });
        });
        js.setOption('exceptions');
    })

    it('reports a queued background job as known and not running', function(done) {
        var f = fname('bg');
        var job = c.submitJob(f, 'x', {background: true});
        job.once('created', function() {
            should.exist(job.handle);
            job.once('status', function(s) {
                s.known.should.be.true;
                s.running.should.be.false;
                done();
            });
            job.getStatus();
        });
    })

    it('runs queued background jobs HIGH, then NORMAL, then LOW', function(done) {
        var f = fname('prio'), order = [], created = 0;
        ['LOW', 'NORMAL', 'HIGH'].forEach(function(p) {
            var job = c.submitJob(f, p, {background: true, priority: p});
            job.once('created', function() {
                if (++created < 3) { return; }
                w.addFunction(f, function(job) {
                    order.push(job.payload.toString());
                    job.workComplete();
                    if (order.length === 3) {
                        order.should.eql(['HIGH', 'NORMAL', 'LOW']);
                        done();
                    }
                });
            });
        });
    })

    it('wakes a sleeping worker for a job submitted later', function(done) {
        var f = fname('wake');
        w.addFunction(f, function(job) { job.workComplete('awake'); });
        setTimeout(function() {
            var job = c.submitJob(f, 'x');
            job.on('complete', function() { job.response.toString().should.equal('awake'); done(); });
        }, 300);
    })

    it('echoes binary data unchanged', function(done) {
        var js = c.jobServers[0];
        js.once('echo', function(r) { r.toString().should.equal('ping-pong'); done(); });
        js.echo('ping-pong');
    })
})
